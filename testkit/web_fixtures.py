"""The web, on loopback: committed pages, scripted misbehaviour, and recorded search services.

`WebFixtures` is one HTTP server on 127.0.0.1 that serves the pages in tests/fixtures/pages/, routes that
misbehave on purpose (redirects, a slow drip, a huge body, an image, error statuses) and fakes of Tavily's
and SearxNG's APIs that answer with the recorded responses in tests/fixtures/search/. `DuckDuckGoRecording`
stands in for html.duckduckgo.com: ddgs talks to that fixed host, so the fake is an HTTPS proxy on
loopback that answers for it with a certificate from a throwaway CA (made with the `openssl` CLI); ddgs
is pointed at it through its own proxy and CA-bundle settings, and its real parsing code runs.

`start_https()` serves the same routes over HTTPS as `localhost`, with a certificate from such a CA too.
`script()` serves a test's own answer byte for byte (a hand-made Content-Encoding, a hostile charset).

The real client code (httpx, tavily-python, ddgs) talks to these exactly as it would to the real
services. Everything listens on loopback only and never reaches the network. Run it standalone (for a
worker started by hand) with `python -m testkit.web_fixtures --port 8098`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testkit.loopback import LoopbackServer, QuietHandler

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
PAGES = FIXTURES / "pages"
SEARCH = FIXTURES / "search"
LONG_ARTICLES = ("long-herring-fishery", "long-battery-ageing", "long-roman-roads")
TAVILY_KEY = "tvly-test-7c1e0f5a"  # the fake Tavily's default key; any other gets its recorded 401
METADATA_URL = "http://169.254.169.254/latest/meta-data/"  # the classic target of a redirect attack
# The smallest valid PNG: a 1x1 transparent pixel.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)


@dataclass
class Seen:
    """One request a fake received (for assertions: what was asked, with which headers)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


class _TLSServer(ThreadingHTTPServer):
    """HTTPS on loopback: each accepted connection is wrapped in TLS before a handler sees it (a client
    that refuses the certificate fails the handshake, which the server loop ignores)."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address


@dataclass
class WebFixtures:
    retry_after: int = 7  # seconds, on the scripted 429 and 503 routes
    tavily_key: str = TAVILY_KEY  # the one key the fake Tavily accepts
    requests: list[Seen] = field(default_factory=list)
    scripted: dict[str, Answer] = field(default_factory=dict)  # by path, from script()
    https_url: str = ""  # after start_https(): the same routes over HTTPS
    _http: LoopbackServer = field(default_factory=LoopbackServer)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _tls: _TLSServer | None = None
    _tls_dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> WebFixtures:
        self._http.serve(_handler_for(self), name="web-fixtures")
        return self

    def start_https(self, host: str = "localhost") -> str:
        """Serve the same routes over HTTPS as well, as `host`, with a certificate from a throwaway CA;
        sets `https_url` and returns the CA file a client must trust."""
        self._tls_dir = tempfile.TemporaryDirectory(prefix="cairn-tls-")
        ca, context = server_context(Path(self._tls_dir.name), host)
        self._tls = _TLSServer(context, _handler_for(self))
        threading.Thread(target=self._tls.serve_forever, daemon=True, name="web-fixtures-tls").start()
        self.https_url = f"https://{host}:{self._tls.server_address[1]}"
        return str(ca)

    def stop(self) -> None:
        self._http.shutdown()
        if self._tls is not None:
            self._tls.shutdown()
            self._tls.server_close()
        if self._tls_dir is not None:
            self._tls_dir.cleanup()

    @property
    def url(self) -> str:
        return self._http.url

    def url_for(self, name: str) -> str:
        """A committed page by its file name without `.html` (`glacier-flow`), else a scripted route
        (`slow?seconds=3`, `huge`, `image.png`, `status/404`, `redirect-chain/2`, …)."""
        if (PAGES / f"{name}.html").is_file():
            return f"{self.url}/pages/{name}.html"
        return f"{self.url}/{name}"

    def script(self, body: bytes, headers: dict[str, str], status: int = 200) -> str:
        """A URL that answers exactly `status`, `headers` and `body`, sent as they are (nothing is
        encoded or labelled for the test), with a Content-Length."""
        with self._lock:
            path = f"/scripted/{len(self.scripted)}"
            self.scripted[path] = (status, headers, body)
        return self.url + path

    def large_page_urls(self, count: int) -> list[str]:
        """`count` distinct long articles (over 100 KB of article text each), built from the committed
        ones: page i is article i mod 3 with its own part number in the title."""
        return [f"{self.url}/large/{i}" for i in range(count)]

    def tavily_url(self, mode: str = "ok") -> str:
        """A base URL for tavily-python (CAIRN_TAVILY_URL): `ok`, or a status code to answer with."""
        return f"{self.url}/tavily/{mode}"

    def searxng_url(self, mode: str = "ok") -> str:
        """A SearxNG base URL (CAIRN_SEARXNG_URL): `ok`, `empty`, `outage`, or a status code."""
        return f"{self.url}/searxng/{mode}"

    def seen(self, prefix: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(prefix)]

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


Answer = tuple[int, dict[str, str], bytes]


def _json(name: str) -> bytes:
    return (SEARCH / name).read_bytes()


def _html(text: str) -> bytes:
    return (
        f"<!DOCTYPE html><html><head><title>{text}</title></head><body><h1>{text}</h1></body></html>".encode()
    )


def large_page(index: int) -> bytes:
    """Long article `index mod 3`, retitled as part `index`, so every page is its own document."""
    name = LONG_ARTICLES[index % len(LONG_ARTICLES)]
    page = (PAGES / f"{name}.html").read_text(encoding="utf-8")
    page = re.sub(r"(<title>|<h1>|og:title\" content=\")([^<\"|]+)", rf"\g<1>Part {index}: \g<2>", page)
    return page.encode("utf-8")


def _page(fixtures: WebFixtures, path: str, query: dict[str, str]) -> Answer:
    """The GET routes of ordinary web pages."""
    html = {"Content-Type": "text/html; charset=utf-8"}
    if path.startswith("/pages/"):
        file = PAGES / Path(path).name
        if not file.is_file():
            return 404, html, _html("Not found")
        # Legacy pages declare their charset only in a <meta> tag, as such sites do.
        return (
            200,
            {"Content-Type": "text/html" if file.name.startswith("legacy-") else html["Content-Type"]},
            file.read_bytes(),
        )
    if path.startswith("/large/"):
        return 200, html, large_page(int(path.rsplit("/", 1)[1]))
    if path == "/redirect":
        return int(query.get("status", "302")), {"Location": query["to"]}, b""
    if path.startswith("/redirect-chain/"):
        hops = int(path.rsplit("/", 1)[1])
        target = f"/redirect-chain/{hops - 1}" if hops > 1 else "/pages/glacier-flow.html"
        return 301, {"Location": target}, b""
    if path == "/redirect-to-metadata":
        return 302, {"Location": METADATA_URL}, b""
    if path == "/image.png":
        return 200, {"Content-Type": "image/png"}, PNG
    if path == "/report.pdf":
        return (
            200,
            {"Content-Type": "application/pdf"},
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
        )
    if path == "/notes.txt":
        body = "Field notes, Morteratsch Glacier, 14 August\n\nStake 7 moved 31 cm since the last reading.\n"
        return 200, {"Content-Type": "text/plain; charset=utf-8"}, body.encode()
    if path == "/no-content-type":
        return 200, {}, (PAGES / "glacier-flow.html").read_bytes()
    if path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        headers = dict(html)
        if status in (429, 503):
            headers["Retry-After"] = str(fixtures.retry_after)
        return status, headers, _html(f"{status} scripted")
    return 404, html, _html("Not found")


def _huge(kilobytes: int) -> bytes:
    paragraph = (
        "<p>Stake readings along the centre line continued through the night; each one was logged with "
        "its time, its position and the surface speed it implied, so that the record could be checked "
        "against the satellite velocities later.</p>\n"
    )
    head = "<!DOCTYPE html><html><head><title>Stake log</title></head><body><article><h1>Stake log</h1>\n"
    count = kilobytes * 1024 // len(paragraph) + 1
    return (head + paragraph * count + "</article></body></html>").encode()


def _tavily(fixtures: WebFixtures, mode: str, authorization: str) -> Answer:
    # Tavily's API answers JSON, with errors as {"detail": {"error": "..."}}.
    headers = {"Content-Type": "application/json"}
    if authorization != f"Bearer {fixtures.tavily_key}":
        return 401, headers, _json("tavily_401.json")
    if mode == "ok":
        return 200, headers, _json("tavily_search.json")
    status = int(mode)
    if status == 429:
        headers["Retry-After"] = str(fixtures.retry_after)
    recorded = SEARCH / f"tavily_{status}.json"
    body = recorded.read_bytes() if recorded.is_file() else b'{"detail": {"error": "Internal Server Error"}}'
    return status, headers, body


def _searxng(mode: str, query: dict[str, str], fixtures: WebFixtures) -> Answer:
    if query.get("format") != "json" or mode == "403":
        # What SearxNG answers when the instance does not list `json` in search.formats.
        return 403, {"Content-Type": "text/html; charset=utf-8"}, _html("403 Forbidden")
    if mode in ("ok", "empty", "outage"):
        name = {"ok": "searxng_search.json", "empty": "searxng_empty.json", "outage": "searxng_outage.json"}
        return 200, {"Content-Type": "application/json"}, _json(name[mode])
    headers = {"Content-Type": "text/html; charset=utf-8"}
    if mode == "429":
        headers["Retry-After"] = str(fixtures.retry_after)
    return int(mode), headers, _html(f"{mode} scripted")


def _handler_for(fixtures: WebFixtures) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            fixtures._record(Seen("GET", self.path, dict(self.headers)))
            if parts.path == "/slow":
                return self._drip(float(query.get("seconds", "5")))
            if parts.path == "/huge":
                return self._send(
                    200, {"Content-Type": "text/html; charset=utf-8"}, _huge(int(query.get("kb", "2048")))
                )
            if parts.path.startswith("/searxng/") and parts.path.endswith("/search"):
                return self._send(*_searxng(parts.path.split("/")[2], query, fixtures))
            if parts.path in fixtures.scripted:
                return self._send(*fixtures.scripted[parts.path])
            self._send(*_page(fixtures, parts.path, query))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fixtures._record(Seen("POST", self.path, dict(self.headers), body))
            path = urlsplit(self.path).path
            if path.startswith("/tavily/") and path.endswith("/search"):
                return self._send(
                    *_tavily(fixtures, path.split("/")[2], self.headers.get("Authorization", ""))
                )
            self._send(404, {"Content-Type": "text/plain"}, b"not found")

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            try:
                self.send_body(status, headers, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # The client gave up (a size cap, a timeout): that is what the test wanted.

        def _drip(self, seconds: float) -> None:
            """Headers at once, then a little HTML every 100 ms: only an overall time cap stops it."""
            chunk = b"<p>still loading the glacier survey results ...</p>\n"
            deadline = time.monotonic() + seconds
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while time.monotonic() < deadline:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    time.sleep(0.1)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


# -- DuckDuckGo ------------------------------------------------------------------------------------

DDG_HOST = "html.duckduckgo.com"


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the DuckDuckGo recording needs the openssl CLI (apt-get install openssl)")
    subprocess.run([openssl, *args], check=True, capture_output=True)


def make_ca(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for `host` signed by it: (ca.pem, host.pem, host.key)."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "host.key", "host.csr", "host.pem")
    )
    ext = directory / "host.ext"
    ext.write_text(f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=Cairn test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return ca, cert, key


def server_context(directory: Path, host: str) -> tuple[Path, ssl.SSLContext]:
    """A TLS server context for `host`, its certificate signed by a throwaway CA made in `directory`;
    and the CA file, which a client must trust."""
    ca, cert, key = make_ca(directory, host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return ca, context


@dataclass
class DuckDuckGoRecording:
    """An HTTPS proxy on loopback that answers for html.duckduckgo.com with a recorded results page.

    `mode`: `ok` (the recording), `no-results` (DuckDuckGo's page for a query nothing matches) or
    `blocked` (the 202 challenge page DuckDuckGo shows a client it takes for a bot)."""

    mode: str = "ok"
    requests: list[Seen] = field(default_factory=list)
    _http: LoopbackServer = field(default_factory=LoopbackServer)
    _dir: tempfile.TemporaryDirectory[str] | None = None
    ca_file: str = ""

    def start(self) -> DuckDuckGoRecording:
        self._dir = tempfile.TemporaryDirectory(prefix="cairn-ddg-")
        ca, context = server_context(Path(self._dir.name), DDG_HOST)
        context.set_alpn_protocols(["http/1.1"])
        self.ca_file = str(ca)
        self._http.serve(_proxy_handler_for(self, context), name="ddg-recording")
        return self

    def stop(self) -> None:
        self._http.shutdown()
        if self._dir is not None:
            self._dir.cleanup()

    @property
    def proxy_url(self) -> str:
        return self._http.url

    def answer(self) -> Answer:
        html = {"Content-Type": "text/html; charset=UTF-8"}
        if self.mode == "blocked":
            return (
                202,
                html,
                _html("DuckDuckGo: Unfortunately, bots use DuckDuckGo too. Please complete the challenge"),
            )
        if self.mode == "no-results":
            page = b'<html><body><div id="links" class="results"><div class="no-results">No results.</div></div></body></html>'
            return 200, html, page
        return 200, html, (SEARCH / "duckduckgo_html.html").read_bytes()


def _proxy_handler_for(
    recording: DuckDuckGoRecording, context: ssl.SSLContext
) -> type[BaseHTTPRequestHandler]:
    class Proxy(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_CONNECT(self) -> None:
            if self.path.split(":")[0] != DDG_HOST:
                self.send_error(403, "this recording only answers for " + DDG_HOST)
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            try:
                tls = context.wrap_socket(self.connection, server_side=True)
            except (ssl.SSLError, OSError):
                self.close_connection = True  # The client refused our certificate.
                return
            # Carry on as an HTTP server inside the tunnel.
            self.connection, self.rfile, self.wfile = tls, tls.makefile("rb"), tls.makefile("wb")
            self.close_connection = False
            while not self.close_connection:
                self.handle_one_request()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            recording.requests.append(Seen("POST", self.path, dict(self.headers), body))
            status, headers, page = recording.answer() if self.path.startswith("/html") else (404, {}, b"")
            self.send_body(status, headers, page)

    return Proxy


def load_json(name: str) -> Any:
    """A recorded search response, parsed (for tests that compare against it)."""
    return json.loads(_json(name))


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve Cairn's web fixtures on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8098)
    port = parser.parse_args().port
    web = WebFixtures()
    web._http.serve(_handler_for(web), port, name="web-fixtures")
    print(f"pages:   {web.url_for('glacier-flow')}  (and {web.url}/large/0, /large/1, ...)")
    print(f"Tavily:  CAIRN_TAVILY_URL={web.tavily_url()} TAVILY_API_KEY={TAVILY_KEY}")
    print(f"SearxNG: CAIRN_SEARXNG_URL={web.searxng_url()}")
    print("fetching loopback needs CAIRN_FETCH_ALLOW_PRIVATE=1; Ctrl-C stops")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        web.stop()


if __name__ == "__main__":
    main()

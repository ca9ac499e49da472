"""`fetch_url`: read one web page for the researcher and hand back its main text.

A model chooses the URL, so this is the one place Cairn talks to an address nobody configured. It must
never reach a private, loopback, link-local or otherwise non-public address unless the operator allowed
it (`CAIRN_FETCH_ALLOW_PRIVATE`, `CAIRN_FETCH_ALLOW_HOSTS`): every address a host resolves to is checked,
on every redirect hop, and the connection goes to the address that was checked (the name is not looked
up a second time, so DNS rebinding cannot swap in another). A numeric host in any form the C resolver
accepts (0177.0.0.1, 0x7f.1, 127.1, 2130706433) is judged as the address it means. It must never read
without bounds either: bodies stop at a byte cap counted in decoded bytes, the download at a time cap,
extracted text at a character cap. Content codings are undone here, a bounded step at a time, so a
compressed body never unfolds in memory past the cap; a coding we do not decode is refused, not passed
on. A page is decoded only with a character encoding of the web, never with one of Python's other codecs
(zlib, base64, rot13, ...), which turn bytes into anything at all.

HTML goes through trafilatura for the article text (boilerplate such as navigation and footers dropped),
with a plain lxml text pass when trafilatura finds no article. Errors become `ApplicationError`s with
the stable types below; Temporal owns retries, so the client here never retries, and a failure is never
handed back as an empty page.
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx
import lxml.etree
import lxml.html
import trafilatura
from temporalio.exceptions import ApplicationError

from activities.llm import retry_after
from activities.telemetry import ERROR_TYPE, Telemetry
from common import errors
from common.domains import DomainPolicy
from common.tool_models import FetchedPage
from common.version import __version__
from common.web_config import FetchConfig

# Stable error types: the researcher, tests and operators match on these strings.

USER_AGENT = f"Cairn/{__version__} (+research agent)"
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"text/plain", "text/markdown", "text/x-markdown", "text/csv", "application/json"}
_REDIRECTS = {301, 302, 303, 307, 308}
_RETRYABLE_4XX = {408, 425}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")  # what might be an IPv4 address in inet_aton's forms

_CODINGS = ("gzip", "x-gzip", "deflate")  # the content codings we undo; no others are offered
_HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
    "Accept-Encoding": "gzip, deflate",  # _CODINGS, and nothing else
}
_MAX_CODINGS = 2  # servers apply one; a longer chain only multiplies the work of undoing it
_STEP = 64 * 1024  # the most one decoding stage hands on at a time

# The character encodings of the WHATWG Encoding Standard (those browsers decode pages with), as Python
# names them, with ASCII and Latin-1, which that standard reads as windows-1252. Python's other codecs are
# no charsets of the web: some are not text at all (zlib, bz2, base64, rot13), some fail in untyped ways
# (undefined) or are slow on hostile input (punycode).
_WEB_CHARSETS = frozenset(
    codecs.lookup(name).name
    for name in (
        "utf-8 utf-16 utf-16-le utf-16-be ascii latin-1 cp866 koi8-r koi8-u mac-roman mac-cyrillic cp874 "
        "iso8859-2 iso8859-3 iso8859-4 iso8859-5 iso8859-6 iso8859-7 iso8859-8 iso8859-10 iso8859-13 "
        "iso8859-14 iso8859-15 iso8859-16 cp1250 cp1251 cp1252 cp1253 cp1254 cp1255 cp1256 cp1257 cp1258 "
        "gbk gb2312 gb18030 big5 big5hkscs euc-jp iso2022-jp shift-jis cp932 euc-kr cp949"
    ).split()
)
# Labels of those encodings that Python does not know by these names.
_WEB_LABELS = {
    "windows-874": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
    "iso-8859-8-i": "iso8859-8",
    "windows-31j": "cp932",
    "x-sjis": "shift-jis",
    "windows-949": "cp949",
}


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=errors.FETCH_REFUSED, non_retryable=True)


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` is not a public address (None when it is). IPv4 addresses embedded in IPv6 ones
    (mapped, 6to4, Teredo, NAT64) are judged by the IPv4 address they lead to."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),  # fec0::/10
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not publicly routable", not ip.is_global),
    ):
        if flag:
            return kind
    return None


class _Inflater:
    """Undoes one gzip or deflate coding, handing on at most _STEP bytes at a time: the output of
    `undo` is a lazy stream, so however far the input unfolds, this holds one step of it."""

    def __init__(self, coding: str) -> None:
        # HTTP's deflate is zlib-wrapped, but some servers send it raw: the first two bytes tell.
        self._inflate = None if coding == "deflate" else zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip
        self._head = b""

    def undo(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        for data in pieces:
            if self._inflate is None:
                self._head += data
                if len(self._head) < 2:
                    continue
                data, wrapped = self._head, _zlib_header(self._head)
                self._inflate = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            more = bool(data)
            while more:
                if self._inflate.eof:
                    return  # what follows the end of the stream is not read
                out = self._inflate.decompress(data, _STEP)
                data = self._inflate.unconsumed_tail
                # A full step may leave output inside zlib, to come out on the next call.
                more = bool(data) or len(out) == _STEP
                yield out


def _zlib_header(head: bytes) -> bool:
    """Whether a deflate stream starts with a zlib header (RFC 1950: method 8, check bits)."""
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


@dataclass
class _Body:
    final_url: str
    content_type: str  # the media type, lower case; empty when the server sent none
    data: bytes
    truncated: bool
    charset: str | None  # from the Content-Type header


@dataclass
class _Target:
    url: str  # as it will be reported (the hop's URL)
    parsed: httpx.URL
    addresses: list[str]  # checked addresses to connect to, in resolver order


class PageFetcher:
    """Built once per worker from FetchConfig."""

    def __init__(self, config: FetchConfig, telemetry: Telemetry | None = None) -> None:
        self._config = config
        self._telemetry = telemetry or Telemetry()

    async def fetch(self, url: str, domains: DomainPolicy | None = None) -> FetchedPage:
        """The page at `url`; with `domains`, a URL (or a redirect hop) the policy refuses is the
        non-retryable DomainBlocked, before any connection to it."""
        url = url.strip()
        with self._telemetry.fetch(url) as span:
            try:
                body = await self._download(url, domains)
                page = await asyncio.to_thread(self._extract, url, body)
            except ApplicationError as err:
                span.set_attribute(ERROR_TYPE, err.type or "")
                raise
            span.set_attributes(
                {"cairn.fetch.bytes": page.size_bytes, "cairn.fetch.truncated": page.truncated}
            )
            return page

    # -- the download -------------------------------------------------------------------------------

    async def _download(self, url: str, domains: DomainPolicy | None = None) -> _Body:
        seconds = self._config.timeout_seconds
        try:
            # One cap on the whole download, redirects included; httpx's own timeout is per read.
            async with asyncio.timeout(seconds):
                return await self._follow(url, domains)
        except (TimeoutError, httpx.TimeoutException) as err:
            raise ApplicationError(
                f"fetching {url} took longer than {seconds:g}s (CAIRN_FETCH_TIMEOUT_SECONDS)",
                type=errors.FETCH_TIMEOUT,
            ) from err

    async def _follow(self, url: str, domains: DomainPolicy | None = None) -> _Body:
        # Requests go to a transport, not through httpx's client: the client parses every Location
        # itself, before we can check it, and fails on address forms (0177.0.0.1) we must judge instead.
        # The transport uses no proxy: a proxy would resolve names itself, after our address check.
        # No keep-alive either, so a hop never rides a connection opened (and verified) for another host.
        bundle = self._config.ca_bundle
        async with httpx.AsyncHTTPTransport(
            verify=ssl.create_default_context(cafile=bundle) if bundle else True,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as transport:
            current = url
            for _hop in range(self._config.max_redirects + 1):
                refused = domains.refusal(current) if domains is not None else None
                if refused:
                    raise ApplicationError(refused, type=errors.DOMAIN_BLOCKED, non_retryable=True)
                target = await self._check(current)
                current = target.url
                response = await self._open(transport, target)
                try:
                    if response.status_code in _REDIRECTS and response.headers.get("location"):
                        try:
                            current = urljoin(current, response.headers["location"])
                        except ValueError as err:
                            raise _refused(f"{current[:200]} redirects to an invalid URL: {err}") from err
                        continue
                    _check_status(current, response)
                    content_type = _content_type(current, response)
                    codings = _codings(current, response)
                    data, truncated = await self._read(response, current, codings)
                    return _Body(current, content_type, data, truncated, response.charset_encoding)
                finally:
                    await response.aclose()
        raise ApplicationError(
            f"{url} redirected more than {self._config.max_redirects} times",
            type=errors.FETCH_TOO_MANY_REDIRECTS,
            non_retryable=True,
        )

    async def _check(self, url: str) -> _Target:
        """Parse `url`, resolve its host and refuse it unless every address it resolves to is allowed."""
        try:
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https"):
                raise _refused(f"only http and https URLs can be fetched, not {url[:200]!r}")
            spelled = _ipv4_spelled_out(url, parts)
            parsed = httpx.URL(spelled)
        except (ValueError, httpx.InvalidURL) as err:
            raise _refused(f"{url[:200]!r} is not a valid URL: {err}") from err
        host = parsed.raw_host.decode("ascii").strip("[]").lower().rstrip(".")
        if not host:
            raise _refused(f"{url[:200]!r} has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                raise ApplicationError(
                    f"{host} does not exist ({err})", type=errors.FETCH_HOST_NOT_FOUND, non_retryable=True
                ) from err
            raise ApplicationError(f"cannot resolve {host}: {err}", type=errors.FETCH_UNAVAILABLE) from err
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        if not self._config.allow_private and host not in self._config.allow_hosts:
            for address in addresses:
                ip = ipaddress.ip_address(address)
                problem = address_problem(ip)
                if problem and not any(not isinstance(e, str) and ip in e for e in self._config.allow_hosts):
                    where = f"{host} is" if host == address else f"{host} resolves to {address},"
                    raise _refused(
                        f"refusing to fetch {url[:200]}: {where} a {problem} address. "
                        "Set CAIRN_FETCH_ALLOW_PRIVATE=1, or list the host in CAIRN_FETCH_ALLOW_HOSTS, to allow it"
                    )
        return _Target(url=spelled, parsed=parsed, addresses=addresses)

    async def _open(self, transport: httpx.AsyncHTTPTransport, target: _Target) -> httpx.Response:
        """Connect to a checked address (the first that accepts), naming the host in Host and TLS SNI."""
        headers = {"Host": target.parsed.netloc.decode("ascii"), **_HEADERS}
        extensions = {
            "sni_hostname": target.parsed.raw_host.decode("ascii"),
            "timeout": httpx.Timeout(self._config.timeout_seconds).as_dict(),
        }
        failure: Exception | None = None
        for address in target.addresses:
            request = httpx.Request(
                "GET", target.parsed.copy_with(host=address), headers=headers, extensions=extensions
            )
            try:
                return await transport.handle_async_request(request)
            except httpx.ConnectError as err:
                if _tls_failure(err):
                    raise ApplicationError(
                        f"TLS failed for {target.url[:200]}: {err}", type=errors.FETCH_TLS, non_retryable=True
                    ) from err
                failure = err  # Another of the host's addresses may answer.
            except (httpx.TimeoutException, TimeoutError):
                raise
            except httpx.TransportError as err:
                raise ApplicationError(
                    f"fetching {target.url[:200]} failed: {err!r}", type=errors.FETCH_UNAVAILABLE
                ) from err
        raise ApplicationError(
            f"cannot connect to {target.url[:200]}: {failure!r}", type=errors.FETCH_UNAVAILABLE
        ) from failure

    async def _read(self, response: httpx.Response, url: str, codings: list[str]) -> tuple[bytes, bool]:
        """The decoded body up to the byte cap; past it, stop reading and say the page was cut.
        `codings` are undone here, stage by stage, so no stage ever holds more than a step of output."""
        cap = self._config.max_bytes
        stages = [_Inflater(coding) for coding in codings]
        chunks: list[bytes] = []
        size = 0
        try:
            async for raw in response.aiter_raw():
                pieces: Iterable[bytes] = (raw,)
                for stage in stages:
                    pieces = stage.undo(pieces)
                for piece in pieces:
                    chunks.append(piece)
                    size += len(piece)
                    if size > cap:
                        return b"".join(chunks)[:cap], True
                    # A small input may unfold into much work that yields nothing (empty blocks): let
                    # the time cap in, between steps.
                    await asyncio.sleep(0)
        except httpx.TimeoutException:
            raise
        except zlib.error as err:  # a broken stream stays broken
            raise ApplicationError(
                f"{url[:200]} sent a body that cannot be decoded as {', '.join(codings)}: {err}",
                type=errors.FETCH_HTTP,
                non_retryable=True,
            ) from err
        except httpx.TransportError as err:
            raise ApplicationError(
                f"reading {url[:200]} failed: {err!r}", type=errors.FETCH_UNAVAILABLE
            ) from err
        return b"".join(chunks), False

    # -- extraction ---------------------------------------------------------------------------------

    def _extract(self, url: str, body: _Body) -> FetchedPage:
        """Runs in a thread: trafilatura and lxml are CPU-bound and synchronous."""
        is_html = body.content_type in HTML_TYPES or (not body.content_type and _looks_like_html(body.data))
        charset = body.charset or (_meta_charset(body.data) if is_html else None)
        text = _decode(body.data, charset, body.truncated)
        title = ""
        if is_html:
            title, text = _main_text(text, body.final_url)
        text = text.strip()
        if not text:
            raise ApplicationError(
                f"{body.final_url} has no text to read", type=errors.FETCH_EMPTY, non_retryable=True
            )
        truncated = body.truncated
        if len(text) > self._config.max_chars:
            text, truncated = text[: self._config.max_chars], True
        return FetchedPage(
            url=url,
            final_url=body.final_url,
            title=title,
            text=text,
            content_type=body.content_type or ("text/html" if is_html else "text/plain"),
            size_bytes=len(body.data),
            truncated=truncated,
        )


def _ipv4_spelled_out(url: str, parts: SplitResult) -> str:
    """`url` with a numeric IPv4 host in any form the C resolver accepts (octal 0177.0.0.1, hex 0x7f.1,
    short 127.1, one integer 2130706433) written as the dotted quad it means, as browsers do. That is
    the address checked and connected to; httpx's own parser rejects some of these forms outright."""
    host = (parts.hostname or "").rstrip(".")
    if not _NUMERIC_HOST.fullmatch(host):
        return url
    try:
        address = socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return url  # a name after all (cafe.face), for the resolver
    userinfo, at, hostport = parts.netloc.rpartition("@")
    _, colon, port = hostport.partition(":")
    return parts._replace(netloc=f"{userinfo}{at}{address}{colon}{port}").geturl()


def _codings(url: str, response: httpx.Response) -> list[str]:
    """The response's content codings in the order to undo them; any we do not decode is refused, since
    its bytes are not the page."""
    listed = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in listed if c not in ("", "identity")]
    unknown = [c for c in codings if c not in _CODINGS]
    if unknown or len(codings) > _MAX_CODINGS:
        problem = f"{', '.join(unknown)}, which fetch_url does not decode" if unknown else "too many codings"
        raise ApplicationError(
            f"{url[:200]} is sent with Content-Encoding {', '.join(listed)[:200]}: {problem}",
            type=errors.FETCH_UNSUPPORTED_ENCODING,
            non_retryable=True,
        )
    return codings[::-1]


def _check_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    reason = f"{url[:200]} answered {status} {response.reason_phrase}".rstrip()
    if status == 429:
        raise ApplicationError(
            reason, type=errors.FETCH_RATE_LIMITED, next_retry_delay=retry_after(response.headers)
        )
    if status >= 500 or status in _RETRYABLE_4XX:
        raise ApplicationError(reason, type=errors.FETCH_HTTP, next_retry_delay=retry_after(response.headers))
    raise ApplicationError(reason, type=errors.FETCH_HTTP, non_retryable=True)


def _content_type(url: str, response: httpx.Response) -> str:
    """The media type if it is one we read; an empty string when the server sent none (we sniff)."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type or content_type in HTML_TYPES or content_type in TEXT_TYPES:
        return content_type
    if content_type.endswith("+json"):
        return content_type
    raise ApplicationError(
        f"{url[:200]} is {content_type}, not a page of text (fetch_url reads HTML and plain text)",
        type=errors.FETCH_UNSUPPORTED_TYPE,
        non_retryable=True,
    )


def _tls_failure(err: Exception) -> bool:
    """A certificate that does not verify will not verify on the next attempt either."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def _meta_charset(body: bytes) -> str | None:
    found = _META_CHARSET.search(body[:4096])
    return found.group(1).decode("ascii") if found else None


def _web_charset(charset: str) -> str:
    """The Python codec for a declared charset; refused unless it is a text encoding of the web."""
    label = charset.strip().lower()
    try:
        codec = codecs.lookup(_WEB_LABELS.get(label, label)).name
    except (LookupError, ValueError):
        codec = ""
    if codec not in _WEB_CHARSETS:
        raise ApplicationError(
            f"the page declares charset {charset[:60]!r}, which is not a text encoding of the web",
            type=errors.FETCH_UNSUPPORTED_CHARSET,
            non_retryable=True,
        )
    return codec


def _decode(body: bytes, charset: str | None, truncated: bool) -> str:
    """Decode with the declared charset (refused unless it is one of the web's); else UTF-8, else
    windows-1252 (the web's legacy default). A body cut at the byte cap may end mid-character: that tail is dropped, not guessed."""
    codec = _web_charset(charset) if charset else None
    if b"\x00" in body[:1024] and not body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ApplicationError(
            "the body is binary, not text", type=errors.FETCH_UNSUPPORTED_TYPE, non_retryable=True
        )
    for candidate in (codec, "utf-8"):
        if not candidate:
            continue
        try:
            return codecs.getincrementaldecoder(candidate)("strict").decode(body, final=not truncated)
        except UnicodeDecodeError:
            continue
    return body.decode("windows-1252", errors="replace")


def _main_text(html: str, url: str) -> tuple[str, str]:
    """(title, main text) of an HTML page: trafilatura's article text, or every visible text when it
    finds no article (a page of links or a short notice is still worth reading)."""
    try:
        tree = lxml.html.document_fromstring(
            html.encode("utf-8"), parser=lxml.html.HTMLParser(encoding="utf-8")
        )
    except (ValueError, lxml.etree.ParserError):
        return "", ""
    document = trafilatura.bare_extraction(
        tree, url=url, favor_recall=True, include_comments=False, include_tables=True, with_metadata=True
    )
    text = getattr(document, "text", None) or ""
    title = getattr(document, "title", None) or ""
    if not title:
        found = tree.findtext(".//title")
        title = " ".join((found or "").split())
    if not text.strip():
        text = _visible_text(tree)
    return title, text


def _visible_text(tree: lxml.html.HtmlElement) -> str:
    """Every text a reader could see, line by line. trafilatura drops framesets whole, and the HTML
    parser keeps a <noframes> body as raw markup, so that markup is parsed on its own."""
    for element in tree.xpath("//script|//style|//noscript|//template|//head"):
        element.drop_tree()
    for element in tree.iter("noframes"):
        if element.text and element.text.strip():
            element.text = _visible_text(lxml.html.document_fromstring(element.text))
    lines = (" ".join(line.split()) for line in tree.text_content().splitlines())
    return "\n".join(line for line in lines if line)

"""A small web for end-to-end research runs: a SearxNG-shaped search API and long articles, on loopback.

The researcher's real code paths run against it: `web_search` through the SearxNG backend (JSON API),
`fetch_url` through httpx and trafilatura. Search answers depend only on the query: a query naming a
number n ("aspect 3") finds articles 2n-1 and 2n, so every step of a run reads pages of its own.
Article k is one of the committed long fixture pages (over 100 KB of HTML each) with its own title
and a marker sentence, so each URL's text is distinct. Records every request, so tests can check
that a cited source was really fetched or searched.
"""

from __future__ import annotations

import html
import json
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testkit.loopback import LoopbackServer, QuietHandler

PAGES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pages"
LONG_PAGES = ("long-battery-ageing.html", "long-herring-fishery.html", "long-roman-roads.html")


def marker(k: int) -> str:
    """A sentence only article k contains (its words are rare, so recall can find it)."""
    return f"Field note {k}: the quillwort survey counted {1000 + k} specimens."


class ResearchSite:
    def __init__(self, pages: tuple[str, ...] = LONG_PAGES) -> None:
        """`pages`: the fixture pages articles are made from (short ones keep recorded histories small)."""
        self._http = LoopbackServer()
        self._lock = threading.Lock()
        self.requests: list[str] = []  # paths with query strings, in order
        self._pages = [(PAGES / name).read_text(encoding="utf-8") for name in pages]
        # Titles other than "Article k", by k: a test may give a page a hostile title.
        self.titles: dict[int, str] = {}
        # Another name for the site's host in article k's URL (say "localhost" for 127.0.0.1): the same
        # server under two domains, for domain policies.
        self.hosts: dict[int, str] = {}

    def title_of(self, k: int) -> str:
        return self.titles.get(k, f"Article {k}")

    @property
    def url(self) -> str:
        return self._http.url

    def article_url(self, k: int) -> str:
        base = self.url.replace("127.0.0.1", self.hosts[k], 1) if k in self.hosts else self.url
        return f"{base}/article/{k}"

    def article(self, k: int) -> str:
        base = self._pages[(k - 1) % len(self._pages)]
        title = f"<title>{html.escape(self.title_of(k))}</title>"
        base = re.sub(r"<title>.*?</title>", lambda _: title, base, count=1, flags=re.S)
        if k in self.titles:  # The page's other titles too, so a reader of the page takes this one.
            escaped = html.escape(self.titles[k])
            base = re.sub(r'(<meta property="og:title" content=")[^"]*', lambda m: m.group(1) + escaped, base)
            base = re.sub(r"<h1>.*?</h1>", lambda _: f"<h1>{escaped}</h1>", base, count=1, flags=re.S)
        return re.sub(r"(<article[^>]*>)", rf"\1<p>{marker(k)}</p>", base, count=1)

    def fetched(self) -> set[str]:
        with self._lock:
            return {self.url + p for p in self.requests if p.startswith("/article/")}

    def searched(self) -> list[str]:
        with self._lock:
            return [p for p in self.requests if p.startswith("/search")]

    def hits_for(self, query: str) -> list[dict[str, Any]]:
        found = re.search(r"\d+", query)
        n = int(found.group(0)) if found else 1
        return [
            {
                "url": self.article_url(k),
                "title": self.title_of(k),
                "content": f"Article {k} on the question; {marker(k)}",
                "engine": "loopback",
                "engines": ["loopback"],
                "score": 1.0 / (i + 1),
                "category": "general",
            }
            for i, k in enumerate((2 * n - 1, 2 * n))
        ]

    def start(self) -> ResearchSite:
        site = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with site._lock:
                    site.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/search":
                    query = parse_qs(parts.query).get("q", [""])[0]
                    body = {
                        "query": query,
                        "number_of_results": 2,
                        "results": site.hits_for(query),
                        "answers": [],
                        "corrections": [],
                        "infoboxes": [],
                        "suggestions": [],
                        "unresponsive_engines": [],
                    }
                    self.send_body(200, {"Content-Type": "application/json"}, json.dumps(body).encode())
                    return
                found = re.fullmatch(r"/article/(\d+)", parts.path)
                if found:
                    page = site.article(int(found.group(1))).encode()
                    self.send_body(200, {"Content-Type": "text/html; charset=utf-8"}, page)
                    return
                self.send_body(404, {"Content-Type": "text/plain"}, b"not found")

        self._http.serve(Handler, name="research-site")
        return self

    def stop(self) -> None:
        self._http.shutdown()

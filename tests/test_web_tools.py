"""The researcher's web tools through their real code paths: httpx and trafilatura against pages on a
loopback server, tavily-python and SearxNG's JSON API against recorded answers, ddgs against a recorded
DuckDuckGo page behind a loopback HTTPS proxy. Nothing here reaches the network."""

from __future__ import annotations

import base64
import binascii
import bz2
import functools
import gzip
import ipaddress
import socket
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from urllib.parse import quote

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.exceptions import ApplicationError

from activities.fetch import PageFetcher, address_problem
from activities.telemetry import ERROR_TYPE, Telemetry
from activities.web_search import WebSearch, normalize_hits
from common import errors
from common.config import ConfigError
from common.tool_models import FetchedPage
from common.version import __version__
from common.web_config import FetchConfig, SearchConfig, parse_allow_hosts
from testkit.web_fixtures import LONG_ARTICLES, PAGES, TAVILY_KEY, DuckDuckGoRecording, WebFixtures, load_json

OPEN = FetchConfig(allow_private=True)  # the fixtures live on loopback


@pytest.fixture(scope="module")
def web() -> Iterator[WebFixtures]:
    server = WebFixtures().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ddg() -> Iterator[DuckDuckGoRecording]:
    recording = DuckDuckGoRecording().start()
    yield recording
    recording.stop()


async def failure(coro: object) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await coro  # type: ignore[misc]
    return caught.value


# -- fetch_url ------------------------------------------------------------------------------------


async def test_fetch_keeps_the_article_and_drops_the_boilerplate(web: WebFixtures) -> None:
    url = web.url_for("glacier-flow")
    page = await PageFetcher(OPEN).fetch(url)
    assert page.title == "How glaciers move: sliding, creep and surges"
    assert page.final_url == url and page.content_type == "text/html" and not page.truncated
    assert page.size_bytes == (PAGES / "glacier-flow.html").stat().st_size
    for kept in (
        "Glen's flow law",
        "Regelation works for small obstacles",
        "Jakobshavn",
        "controlling obstacle size",
    ):
        assert kept in page.text
    for dropped in ("Subscribe to the Northern Earth Review", "cookie", "All rights reserved", "Related stories",
                    "Podcasts", "Expedition cruises", "Share this article", "gtag("):  # fmt: skip
        assert dropped not in page.text
    assert (
        web.seen("/pages/glacier-flow.html")[-1].headers["User-Agent"]
        == f"Cairn/{__version__} (+research agent)"
    )


async def test_long_articles_are_extracted_whole(web: WebFixtures) -> None:
    fetcher = PageFetcher(OPEN)
    for name in LONG_ARTICLES:
        page = await fetcher.fetch(web.url_for(name))
        assert len(page.text) >= 100_000, name
        assert "All rights reserved" not in page.text and "Most read this week" not in page.text
    pages = [await fetcher.fetch(url) for url in web.large_page_urls(4)]
    assert [p.title.split(":")[0] for p in pages] == ["Part 0", "Part 1", "Part 2", "Part 3"]
    assert all(len(p.text) >= 100_000 for p in pages)


def test_the_long_articles_are_what_their_builder_writes() -> None:
    from tests.fixtures.build_long_articles import TOPICS, page

    for topic in TOPICS:
        assert (PAGES / f"{topic.slug}.html").read_text(encoding="utf-8") == page(topic), topic.slug


async def test_redirects_are_followed_and_bounded(web: WebFixtures) -> None:
    page = await PageFetcher(OPEN).fetch(web.url_for("redirect-chain/3"))
    assert page.final_url == web.url_for("glacier-flow") and "Glen's flow law" in page.text
    err = await failure(PageFetcher(OPEN).fetch(web.url_for("redirect-chain/6")))
    assert err.type == errors.FETCH_TOO_MANY_REDIRECTS and err.non_retryable


async def test_loopback_is_refused_by_default_and_says_which_setting_allows_it(web: WebFixtures) -> None:
    before = len(web.seen("/pages/glacier-flow.html"))
    err = await failure(PageFetcher(FetchConfig()).fetch(web.url_for("glacier-flow")))
    assert err.type == errors.FETCH_REFUSED and err.non_retryable
    assert (
        "127.0.0.1" in err.message
        and "loopback" in err.message
        and "CAIRN_FETCH_ALLOW_PRIVATE" in err.message
    )
    assert len(web.seen("/pages/glacier-flow.html")) == before  # refused before connecting
    allowed = FetchConfig(allow_hosts=parse_allow_hosts("127.0.0.1"))
    assert "Glen's flow law" in (await PageFetcher(allowed).fetch(web.url_for("glacier-flow"))).text


async def test_the_request_names_the_host_it_connects_to_by_checked_address(web: WebFixtures) -> None:
    url = web.url_for("glacier-flow").replace("127.0.0.1", "localhost")
    err = await failure(PageFetcher(FetchConfig()).fetch(url))
    assert "localhost resolves to 127.0.0.1, a loopback address" in err.message
    for allowed in ("localhost", "127.0.0.0/8"):
        page = await PageFetcher(FetchConfig(allow_hosts=parse_allow_hosts(allowed))).fetch(url)
        assert page.final_url == url and "Glen's flow law" in page.text
        assert web.seen("/pages/glacier-flow.html")[-1].headers["Host"] == url.split("/")[2]


async def test_https_is_verified_against_the_host_name_not_the_address(web: WebFixtures) -> None:
    # The connection goes to the checked address, yet TLS (SNI and certificate) names the host.
    ca_file = web.start_https("localhost")
    url = f"{web.https_url}/pages/glacier-flow.html"
    config = FetchConfig(allow_hosts=parse_allow_hosts("localhost"), ca_bundle=ca_file)
    page = await PageFetcher(config).fetch(url)
    assert page.final_url == url and "Glen's flow law" in page.text
    err = await failure(PageFetcher(FetchConfig(allow_hosts=parse_allow_hosts("localhost"))).fetch(url))
    assert err.type == errors.FETCH_TLS and err.non_retryable
    # The certificate is for localhost, so the bare address does not verify either.
    err = await failure(
        PageFetcher(replace(config, allow_private=True)).fetch(url.replace("localhost", "127.0.0.1"))
    )
    assert err.type == errors.FETCH_TLS


async def test_a_redirect_to_a_private_address_is_refused(web: WebFixtures) -> None:
    # The first hop is allowed by name; the second (cloud metadata) is checked again and refused.
    fetcher = PageFetcher(FetchConfig(allow_hosts=parse_allow_hosts("127.0.0.1")))
    err = await failure(fetcher.fetch(web.url_for("redirect-to-metadata")))
    assert err.type == errors.FETCH_REFUSED and err.non_retryable
    assert "169.254.169.254" in err.message and "link-local" in err.message


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.org/x", "gopher://127.0.0.1:6379/_INFO"]
)
async def test_only_http_and_https_are_fetched(url: str) -> None:
    err = await failure(PageFetcher(OPEN).fetch(url))
    assert err.type == errors.FETCH_REFUSED and err.non_retryable


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.1.2.3", "private"),
        ("100.64.0.1", "not publicly routable"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("224.0.1.1", "multicast"),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_judgement(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


async def test_the_body_stops_at_the_byte_cap_and_is_still_extracted(web: WebFixtures) -> None:
    page = await PageFetcher(FetchConfig(allow_private=True, max_bytes=100_000)).fetch(
        web.url_for("huge?kb=4096")
    )
    assert page.truncated and page.size_bytes == 100_000
    assert "Stake readings along the centre line" in page.text


async def test_text_is_capped_in_characters(web: WebFixtures) -> None:
    page = await PageFetcher(FetchConfig(allow_private=True, max_chars=10_000)).fetch(
        web.url_for(LONG_ARTICLES[0])
    )
    assert len(page.text) == 10_000 and page.truncated


async def test_a_slow_page_times_out_as_a_retryable_failure(web: WebFixtures) -> None:
    started = time.monotonic()
    err = await failure(
        PageFetcher(FetchConfig(allow_private=True, timeout_seconds=0.5)).fetch(web.url_for("slow?seconds=5"))
    )
    assert err.type == errors.FETCH_TIMEOUT and not err.non_retryable
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("route", "media_type"), [("image.png", "image/png"), ("report.pdf", "application/pdf")]
)
async def test_binary_content_is_refused_by_type(web: WebFixtures, route: str, media_type: str) -> None:
    err = await failure(PageFetcher(OPEN).fetch(web.url_for(route)))
    assert err.type == errors.FETCH_UNSUPPORTED_TYPE and err.non_retryable and media_type in err.message


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "delay"),
    [
        (404, errors.FETCH_HTTP, False, None),
        (410, errors.FETCH_HTTP, False, None),
        (403, errors.FETCH_HTTP, False, None),
        (429, errors.FETCH_RATE_LIMITED, True, timedelta(seconds=7)),
        (500, errors.FETCH_HTTP, True, None),
        (503, errors.FETCH_HTTP, True, timedelta(seconds=7)),
    ],
)
async def test_http_statuses(
    web: WebFixtures, status: int, kind: str, retryable: bool, delay: timedelta | None
) -> None:
    err = await failure(PageFetcher(OPEN).fetch(web.url_for(f"status/{status}")))
    assert (err.type, err.non_retryable, err.next_retry_delay) == (kind, not retryable, delay)
    assert str(status) in err.message


async def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = await failure(PageFetcher(OPEN).fetch(f"http://127.0.0.1:{port}/"))
    assert err.type == errors.FETCH_UNAVAILABLE and not err.non_retryable


async def test_charset_comes_from_the_meta_tag_when_the_header_has_none(web: WebFixtures) -> None:
    page = await PageFetcher(OPEN).fetch(web.url_for("legacy-windows-1252"))
    assert page.title == "Gletscherkunde für Wanderer"  # trafilatura drops the site name
    assert "„Die größte Gefahr ist die Spalte, die man nicht sieht“" in page.text and "180 €" in page.text


async def test_plain_text_and_unlabelled_html(web: WebFixtures) -> None:
    notes = await PageFetcher(OPEN).fetch(web.url_for("notes.txt"))
    assert notes.content_type == "text/plain" and notes.text.startswith("Field notes, Morteratsch Glacier")
    sniffed = await PageFetcher(OPEN).fetch(web.url_for("no-content-type"))
    assert sniffed.content_type == "text/html" and "Glen's flow law" in sniffed.text


async def test_a_page_trafilatura_cannot_read_falls_back_to_its_visible_text(web: WebFixtures) -> None:
    page = await PageFetcher(OPEN).fetch(web.url_for("legacy-frames"))
    assert page.title == "Alpine Glacier Monitoring Network - Data Portal"
    assert "mass balance tables for all 42 monitored glaciers" in page.text and "<p>" not in page.text


async def test_a_page_without_text_is_an_error_not_an_empty_page(web: WebFixtures) -> None:
    err = await failure(PageFetcher(OPEN).fetch(web.url_for("empty")))
    assert err.type == errors.FETCH_EMPTY and err.non_retryable


# -- fetch_url against hostile servers ------------------------------------------------------------

MiB = 1024 * 1024
CAPPED = FetchConfig(allow_private=True, max_bytes=MiB)
# A fetch capped at 1 MiB may hold a few times that (the body, its text, the page); a bomb that
# unfolded in memory would hold hundreds.
MEMORY_BOUND = 16 * MiB


@functools.cache
def squeezed(size: int, wbits: int) -> bytes:
    """`size` bytes of the letter A, gzip-compressed (wbits 31) or zlib-wrapped deflate (wbits 15), at
    about 1000:1; built a MiB at a time, so the test itself never holds the unfolded body."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b"A" * MiB
    return b"".join(packer.compress(block) for _ in range(size // MiB)) + packer.flush()


async def fetch_measured(fetcher: PageFetcher, url: str) -> tuple[FetchedPage | ApplicationError, int]:
    """The page or the failure, with the peak of memory allocated (in any thread) during the fetch."""
    tracemalloc.start()
    try:
        try:
            outcome: FetchedPage | ApplicationError = await fetcher.fetch(url)
        except ApplicationError as err:
            outcome = err
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip, gzip", lambda: gzip.compress(squeezed(256 * MiB, 31))),  # a few hundred bytes
        ("deflate", lambda: squeezed(256 * MiB, 15)),
        ("x-gzip", lambda: squeezed(256 * MiB, 31)),
        ("gzip", lambda: squeezed(48 * MiB, 31)),  # under 64 KB: one read unfolds 48 times the cap
    ],
)
async def test_a_compression_bomb_is_cut_at_the_cap_in_decoded_bytes(
    web: WebFixtures, coding: str, body: Callable[[], bytes]
) -> None:
    url = web.script(body(), {"Content-Type": "text/plain", "Content-Encoding": coding})
    page, peak = await fetch_measured(PageFetcher(CAPPED), url)
    assert isinstance(page, FetchedPage), page
    assert page.truncated and page.size_bytes == MiB and page.text.startswith("AAAA")
    assert peak < MEMORY_BOUND, f"{peak / MiB:.0f} MiB"


@functools.cache
def hollow(size: int) -> bytes:
    """A gzip stream of `size` bytes of empty deflate blocks, gzip-compressed again: undone, it is
    all work and no output, so no byte cap stops it."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    empty = b"\x00\x00\x00\xff\xff"  # an empty stored block, byte-aligned after a sync flush
    parts = [packer.compress(inner.flush(zlib.Z_SYNC_FLUSH))]
    parts += (packer.compress(empty * (MiB // len(empty))) for _ in range(size // MiB))
    return b"".join(parts) + packer.compress(b"\x01\x00\x00\xff\xff" + bytes(8)) + packer.flush()


async def test_a_bomb_that_unfolds_into_nothing_is_stopped_by_the_time_cap(web: WebFixtures) -> None:
    url = web.script(hollow(256 * MiB), {"Content-Type": "text/plain", "Content-Encoding": "gzip, gzip"})
    started = time.monotonic()
    err, peak = await fetch_measured(PageFetcher(replace(CAPPED, timeout_seconds=0.2)), url)
    assert isinstance(err, ApplicationError) and err.type == errors.FETCH_TIMEOUT, err
    assert time.monotonic() - started < 2 and peak < MEMORY_BOUND


@pytest.mark.parametrize("coding", ["br", "zstd", "x-made-up", "compress", "gzip, br", "gzip, gzip, gzip"])
async def test_an_encoding_we_do_not_decode_is_refused_before_the_body_is_read(
    web: WebFixtures, coding: str
) -> None:
    url = web.script(squeezed(256 * MiB, 31), {"Content-Type": "text/plain", "Content-Encoding": coding})
    err, peak = await fetch_measured(PageFetcher(CAPPED), url)
    assert isinstance(err, ApplicationError), err
    assert err.type == errors.FETCH_UNSUPPORTED_ENCODING and err.non_retryable and coding in err.message
    assert peak < MEMORY_BOUND, f"{peak / MiB:.0f} MiB"


NOTES = "Field notes, Morteratsch Glacier.\nStake 7 moved 31 cm since the last reading.\n" * 50


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("", lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some servers send it
        ("gzip, deflate", lambda b: zlib.compress(gzip.compress(b))),  # applied in the order listed
        ("Deflate, identity, GZIP", lambda b: gzip.compress(zlib.compress(b))),
        ("deflate, gzip", lambda b: gzip.compress(zlib.compress(b, wbits=-15))),
    ],
)
async def test_gzip_and_deflate_are_decoded(
    web: WebFixtures, coding: str, encode: Callable[[bytes], bytes]
) -> None:
    headers = {"Content-Type": "text/plain; charset=utf-8"} | ({"Content-Encoding": coding} if coding else {})
    url = web.script(encode(NOTES.encode()), headers)
    page = await PageFetcher(OPEN).fetch(url)
    assert page.text == NOTES.strip() and page.size_bytes == len(NOTES) and not page.truncated
    assert web.seen(url.removeprefix(web.url))[-1].headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", b"this is not gzip"),
        ("deflate", b"nor is this deflate"),
        ("gzip", gzip.compress(b"x")[:-12] + b"garbage!"),
    ],
)
async def test_a_body_that_is_not_what_its_encoding_says_is_a_clear_error(
    web: WebFixtures, coding: str, body: bytes
) -> None:
    url = web.script(body, {"Content-Type": "text/plain", "Content-Encoding": coding})
    err = await failure(PageFetcher(OPEN).fetch(url))
    assert err.type == errors.FETCH_HTTP and err.non_retryable and "cannot be decoded" in err.message


ARTICLE = "<html><head>{meta}<title>Stake log</title></head><body><p>Stake 7 moved 31 cm.</p></body></html>"


# The page as a server that means these bytes-to-bytes codecs would send it (Python would decode it).
BYTES_CODECS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": zlib.compress,
    "base64": base64.b64encode,
    "hex": binascii.hexlify,
    "bz2": bz2.compress,
}


@pytest.mark.parametrize("where", ["header", "meta"])
@pytest.mark.parametrize(
    "charset",
    ["zlib", "base64", "rot13", "hex", "bz2", "x-made-up", "undefined", "punycode", "unicode_escape"],
)
async def test_only_a_text_encoding_of_the_web_may_decode_a_page(
    web: WebFixtures, charset: str, where: str
) -> None:
    if where == "header":
        page = ARTICLE.format(meta="").encode()
        url = web.script(
            BYTES_CODECS.get(charset, bytes)(page), {"Content-Type": f"text/html; charset={charset}"}
        )
    else:
        url = web.script(
            ARTICLE.format(meta=f'<meta charset="{charset}">').encode(), {"Content-Type": "text/html"}
        )
    err = await failure(PageFetcher(OPEN).fetch(url))
    assert err.type == errors.FETCH_UNSUPPORTED_CHARSET and err.non_retryable and charset in err.message


@pytest.mark.parametrize(
    ("charset", "where", "text"),
    [
        ("latin1", "header", "Gletscher für Wanderer"),
        ("Shift_JIS", "header", "氷河の流れ"),
        ("windows-874", "meta", "ธารน้ำแข็ง"),  # a WHATWG label Python knows as cp874
        ("utf8", "meta", "Gletscher für Wanderer"),
    ],
)
async def test_the_web_s_charsets_still_decode(web: WebFixtures, charset: str, where: str, text: str) -> None:
    meta = f'<meta charset="{charset}">' if where == "meta" else ""
    content_type = f"text/html; charset={charset}" if where == "header" else "text/html"
    body = ARTICLE.format(meta=meta).replace("Stake 7 moved 31 cm.", text)
    codec = {"windows-874": "cp874"}.get(charset, charset)
    url = web.script(body.encode(codec), {"Content-Type": content_type})
    assert text in (await PageFetcher(OPEN).fetch(url)).text


@pytest.mark.parametrize("via_redirect", [False, True], ids=["direct", "redirect"])
@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.0.0.1", "127.0.0.1"),  # hex
        ("0x7F.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short forms: the last part fills the remaining bytes
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one integer
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.000.000.001", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("012.1", "10.0.0.1"),
        ("0", "0.0.0.0"),  # which Linux connects to this host
        ("[fec0::1]", "fec0::1"),  # IPv6 site-local: deprecated, never public
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ],
)
async def test_every_numeric_form_of_a_private_address_is_refused(
    web: WebFixtures, host: str, address: str, via_redirect: bool
) -> None:
    # The fixture's own port and page: were the guard to let the address through, the fetch would work.
    target = f"http://{host}:{web.url.rsplit(':', 1)[1]}/pages/glacier-flow.html"
    if via_redirect:  # the first hop is allowed by name only, so the second is judged on its own
        fetcher = PageFetcher(FetchConfig(allow_hosts=parse_allow_hosts("localhost")))
        url = web.url.replace("127.0.0.1", "localhost") + "/redirect?to=" + quote(target, safe="")
    else:
        fetcher, url = PageFetcher(FetchConfig()), target
    err = await failure(fetcher.fetch(url))
    assert err.type == errors.FETCH_REFUSED and err.non_retryable and address in err.message


@pytest.mark.parametrize("location", ["http://[::1/x", "http://[zz]/", "http://0177.0.0.1:port/"])
async def test_a_redirect_to_a_malformed_url_is_refused(web: WebFixtures, location: str) -> None:
    url = web.url_for("redirect?to=" + quote(location, safe=""))
    err = await failure(PageFetcher(FetchConfig(allow_hosts=parse_allow_hosts("127.0.0.1"))).fetch(url))
    assert err.type == errors.FETCH_REFUSED and err.non_retryable


# -- web_search -----------------------------------------------------------------------------------


def test_available_reflects_configuration() -> None:
    assert WebSearch(SearchConfig()).available() == []
    assert WebSearch(SearchConfig(searxng_url="http://127.0.0.1:8888")).available() == ["searxng"]
    every = SearchConfig(tavily_api_key="k", searxng_url="http://s", duckduckgo=True)
    assert WebSearch(every).available() == ["tavily", "searxng", "duckduckgo"]
    env = {
        "TAVILY_API_KEY": "tvly-secret",
        "CAIRN_SEARXNG_URL": "http://s/",
        "CAIRN_SEARCH_BACKENDS": "ddg, tavily",
    }
    config = SearchConfig.from_env(env)
    assert config.backends == ["duckduckgo", "tavily"] and config.searxng_url == "http://s"
    assert "tvly-secret" not in repr(config)
    assert SearchConfig.from_env({"CAIRN_DDG": "1"}).backends == ["duckduckgo"]
    assert SearchConfig.from_env({}).backends == []
    with pytest.raises(ConfigError, match="TAVILY_API_KEY"):
        SearchConfig.from_env({"CAIRN_SEARCH_BACKENDS": "tavily"})
    with pytest.raises(ConfigError, match="CAIRN_SEARCH_BACKENDS"):
        SearchConfig.from_env({"CAIRN_SEARCH_BACKENDS": "bing"})
    with pytest.raises(ConfigError, match="CAIRN_SEARXNG_URL"):
        SearchConfig.from_env({"CAIRN_SEARXNG_URL": "searx.local"})
    fetch = FetchConfig.from_env(
        {"CAIRN_FETCH_ALLOW_PRIVATE": "1", "CAIRN_FETCH_ALLOW_HOSTS": "intranet.example, 10.0.0.0/8"}
    )
    assert fetch.allow_private and fetch.allow_hosts == (
        "intranet.example",
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert not FetchConfig.from_env({}).allow_private


def tavily(web: WebFixtures, mode: str = "ok", key: str = TAVILY_KEY) -> SearchConfig:
    return SearchConfig(tavily_api_key=key, tavily_url=web.tavily_url(mode), timeout_seconds=5)


async def test_tavily_answers_from_its_recorded_response(web: WebFixtures) -> None:
    found = await WebSearch(tavily(web)).search("how do glaciers move", max_results=3)
    recorded = load_json("tavily_search.json")["results"]
    assert found.backend == "tavily" and found.query == "how do glaciers move"
    assert [(h.title, h.url, h.snippet) for h in found.hits] == [
        (r["title"], r["url"], r["content"]) for r in recorded[:3]
    ]
    request = web.seen("/tavily/ok/search")[-1]
    assert request.headers["Authorization"] == f"Bearer {TAVILY_KEY}"
    assert b'"query": "how do glaciers move"' in request.body and b'"max_results": 3' in request.body
    assert TAVILY_KEY not in found.model_dump_json()


async def test_a_bad_tavily_key_fails_for_good_without_showing_the_key(web: WebFixtures) -> None:
    err = await failure(WebSearch(tavily(web, key="tvly-wrong-key")).search("glaciers"))
    assert err.type == errors.SEARCH_AUTH and err.non_retryable
    assert "TAVILY_API_KEY" in err.message and "tvly-wrong-key" not in err.message


@pytest.mark.parametrize(
    ("mode", "kind", "retryable", "delay"),
    [
        ("429", errors.SEARCH_RATE_LIMITED, True, timedelta(seconds=7)),
        ("432", errors.SEARCH_QUOTA, False, None),
        ("500", errors.SEARCH_UNAVAILABLE, True, None),
        ("400", errors.SEARCH_BAD_REQUEST, False, None),
    ],
)
async def test_tavily_failures(
    web: WebFixtures, mode: str, kind: str, retryable: bool, delay: timedelta | None
) -> None:
    err = await failure(WebSearch(tavily(web, mode)).search("glaciers"))
    assert (err.type, err.non_retryable, err.next_retry_delay) == (kind, not retryable, delay)


async def test_searxng_answers_from_its_recorded_response(web: WebFixtures) -> None:
    found = await WebSearch(SearchConfig(searxng_url=web.searxng_url())).search(
        "how do glaciers move", max_results=10
    )
    assert found.backend == "searxng"
    # The #Motion duplicate of the Wikipedia page is dropped; whitespace in titles is collapsed.
    assert [h.url for h in found.hits] == [
        r["url"] for r in load_json("searxng_search.json")["results"] if "#" not in r["url"]
    ]
    assert found.hits[2].title == "Glacier flow - AntarcticGlaciers.org"
    assert web.seen("/searxng/ok/search")[-1].path.endswith("format=json&pageno=1")


async def test_searxng_empty_result_is_an_answer_but_an_outage_is_not(web: WebFixtures) -> None:
    empty = await WebSearch(SearchConfig(searxng_url=web.searxng_url("empty"))).search("zzqv glacier xkcdq")
    assert empty.hits == [] and empty.backend == "searxng"
    err = await failure(WebSearch(SearchConfig(searxng_url=web.searxng_url("outage"))).search("glaciers"))
    assert (
        err.type == errors.SEARCH_UNAVAILABLE
        and not err.non_retryable
        and "brave (too many requests)" in err.message
    )


async def test_searxng_without_the_json_format_says_how_to_enable_it(web: WebFixtures) -> None:
    err = await failure(WebSearch(SearchConfig(searxng_url=web.searxng_url("403"))).search("glaciers"))
    assert err.type == errors.SEARCH_AUTH and err.non_retryable and "format=json" in err.message


async def test_a_failing_backend_falls_back_to_the_next(web: WebFixtures) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = SearchConfig(
        tavily_api_key=TAVILY_KEY, tavily_url=web.tavily_url("500"), searxng_url=web.searxng_url()
    )
    found = await WebSearch(config, Telemetry(provider.get_tracer("test"))).search("glaciers")
    assert found.backend == "searxng" and found.hits
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["search tavily"].attributes[ERROR_TYPE] == errors.SEARCH_UNAVAILABLE  # type: ignore[index]
    assert spans["search searxng"].attributes["cairn.search.hits"] == len(found.hits)  # type: ignore[index]
    # Both fail: the last failure is raised.
    both = SearchConfig(
        tavily_api_key=TAVILY_KEY, tavily_url=web.tavily_url("500"), searxng_url=web.searxng_url("429")
    )
    err = await failure(WebSearch(both).search("glaciers"))
    assert err.type == errors.SEARCH_RATE_LIMITED and err.next_retry_delay == timedelta(seconds=7)


async def test_a_failure_retrying_cannot_fix_does_not_fall_back(web: WebFixtures) -> None:
    before = len(web.seen("/searxng/ok/"))
    config = SearchConfig(
        tavily_api_key="tvly-wrong", tavily_url=web.tavily_url(), searxng_url=web.searxng_url()
    )
    err = await failure(WebSearch(config).search("glaciers"))
    assert err.type == errors.SEARCH_AUTH and len(web.seen("/searxng/ok/")) == before


async def test_no_backend_means_not_configured(web: WebFixtures) -> None:
    err = await failure(WebSearch(SearchConfig()).search("glaciers"))
    assert (
        err.type == errors.SEARCH_NOT_CONFIGURED and err.non_retryable and "CAIRN_SEARXNG_URL" in err.message
    )
    err = await failure(
        WebSearch(SearchConfig(searxng_url=web.searxng_url())).search("glaciers", backend="tavily")
    )
    assert err.type == errors.SEARCH_NOT_CONFIGURED and "searxng" in err.message
    err = await failure(WebSearch(SearchConfig(searxng_url=web.searxng_url())).search("   "))
    assert err.type == errors.SEARCH_BAD_REQUEST and err.non_retryable


def ddg_config(ddg: DuckDuckGoRecording, **overrides: object) -> SearchConfig:
    settings: dict[str, object] = {
        "duckduckgo": True,
        "ddg_proxy": ddg.proxy_url,
        "ddg_ca_bundle": ddg.ca_file,
    }
    settings.update(overrides)
    return SearchConfig(timeout_seconds=5, **settings)  # type: ignore[arg-type]


async def test_duckduckgo_answers_from_its_recorded_page(ddg: DuckDuckGoRecording) -> None:
    ddg.mode = "ok"
    found = await WebSearch(ddg_config(ddg)).search("how do glaciers move", max_results=10)
    assert found.backend == "duckduckgo"
    urls = {h.url for h in found.hits}
    assert urls == {
        "https://www.usgs.gov/faqs/how-do-glaciers-move",
        "https://en.wikipedia.org/wiki/Glacier",
        "https://www.antarcticglaciers.org/glacier-processes/glacier-flow-2/",  # unwrapped from /l/?uddg=
        "https://www.britannica.com/science/glacier/Glacier-flow",
    }  # and the ad (a duckduckgo.com/y.js link) is gone
    wiki = next(h for h in found.hits if "wikipedia" in h.url)
    assert wiki.title == "Glacier - Wikipedia" and wiki.snippet.startswith(
        "A glacier is a persistent body of dense ice"
    )
    assert b"q=how+do+glaciers+move" in ddg.requests[-1].body


@pytest.mark.parametrize("mode", ["no-results", "blocked"])
async def test_duckduckgo_without_results_is_a_retryable_failure(ddg: DuckDuckGoRecording, mode: str) -> None:
    # ddgs cannot tell "no hits" from "refused", so neither may pass for an empty answer.
    ddg.mode = mode
    try:
        err = await failure(WebSearch(ddg_config(ddg)).search("glaciers"))
    finally:
        ddg.mode = "ok"
    assert err.type == errors.SEARCH_UNAVAILABLE and not err.non_retryable


async def test_duckduckgo_verifies_tls(ddg: DuckDuckGoRecording) -> None:
    # Without the test CA, ddgs must refuse the recording's certificate.
    err = await failure(WebSearch(ddg_config(ddg, ddg_ca_bundle=None)).search("glaciers"))
    assert err.type == errors.SEARCH_UNAVAILABLE and "certificate" in err.message


def test_hits_are_normalized() -> None:
    raw = [
        ("  Glacier \n flow ", " https://a.example/x ", " first\tsnippet "),
        ("dup", "https://a.example/x#part", ""),
        ("no scheme", "//b.example/y", ""),
        ("javascript", "javascript:alert(1)", ""),
        (None, "http://c.example/", None),
        ("d", "https://d.example/", ""),
    ]
    hits = normalize_hits(raw, limit=3)
    assert [(h.title, h.url, h.snippet) for h in hits] == [
        ("Glacier flow", "https://a.example/x", "first snippet"),
        ("", "http://c.example/", ""),
        ("d", "https://d.example/", ""),
    ]
    assert normalize_hits(raw, limit=1) == hits[:1]

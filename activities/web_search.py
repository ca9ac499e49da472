"""`web_search`: the researcher's web search over the backends this worker is configured with.

Tavily (through tavily-python's async client), a self-hosted SearxNG (its JSON API) and DuckDuckGo
(through ddgs) answer the same way: a `SearchResults` of normalized hits. Backends are tried in the
configured order; a retryable failure (rate limit, 5xx, timeout) moves on to the next one, and when all
fail the last error is raised. A failure retrying cannot fix (a bad key, a refused request) is raised at
once, so a broken configuration is seen rather than papered over by another backend's answers.

This is a plain class the researcher's tool activity holds; Temporal owns retries, so no client here
retries on its own. Errors become `ApplicationError`s with the stable types below. It must never put
the Tavily key in a result, a message, a log line or a span, and never turn a failed search into an
empty one: zero hits is an answer only when the service said so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from ddgs import DDGS
from ddgs.exceptions import DDGSException, RatelimitException
from ddgs.exceptions import TimeoutException as DDGSTimeout
from tavily import AsyncTavilyClient
from tavily.errors import TimeoutError as TavilyTimeout
from temporalio.exceptions import ApplicationError

from activities.fetch import USER_AGENT
from activities.llm import retry_after
from activities.redact import redact
from activities.telemetry import ERROR_TYPE, Telemetry
from common import errors
from common.domains import DomainPolicy
from common.tool_models import SearchHit, SearchResults
from common.web_config import DUCKDUCKGO, MAX_RESULTS_LIMIT, SEARXNG, TAVILY, SearchConfig

# Stable error types: the researcher, tests and operators match on these strings.

NAMES = {TAVILY: "Tavily", SEARXNG: "SearxNG", DUCKDUCKGO: "DuckDuckGo"}

log = logging.getLogger(__name__)


class _StatusError(Exception):
    """A non-2xx answer, raised from an httpx response hook so the status, headers and body survive
    (tavily-python's own errors drop `Retry-After`)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status = response.status_code
        self.headers = response.headers
        self.detail = _detail(response)


async def _raise_for_status(response: httpx.Response) -> None:
    if not response.is_success and not response.is_redirect:  # redirects are followed
        await response.aread()
        raise _StatusError(response)


def _detail(response: httpx.Response) -> str:
    """The service's own explanation, short and cleared of credentials: Tavily's
    `{"detail": {"error": ...}}`, else the body."""
    return redact(_said(response))


def _said(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, dict) and detail.get("error"):
            return str(detail["error"])[:300]
        for key in ("detail", "error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return str(body)[:300]


def status_error(
    backend: str, status: int, headers: Mapping[str, str] | None, detail: str
) -> ApplicationError:
    """Map a search service's HTTP status onto an ApplicationError Temporal's retry policy acts on."""
    name = NAMES[backend]
    said = f": {detail}" if detail else ""
    if status == 429:
        return ApplicationError(
            f"{name} is rate limiting (429){said}",
            type=errors.SEARCH_RATE_LIMITED,
            next_retry_delay=retry_after(headers),
        )
    if status in (401, 403):
        if backend == SEARXNG and status == 403:
            # SearxNG answers 403 when the instance does not allow `format=json`.
            text = "SearxNG refused format=json (403): enable `json` under `search: formats:` in its settings.yml"
        elif backend == TAVILY:
            text = f"Tavily refused the credentials ({status}): check TAVILY_API_KEY{said}"
        else:
            text = f"{name} refused access ({status}){said}"
        return ApplicationError(text, type=errors.SEARCH_AUTH, non_retryable=True)
    if backend == TAVILY and status in (432, 433):  # Tavily's "plan / pay-as-you-go limit reached"
        return ApplicationError(
            f"Tavily's usage limit is reached ({status}){said}", type=errors.SEARCH_QUOTA, non_retryable=True
        )
    if status == 408 or status >= 500:
        return ApplicationError(
            f"{name} failed ({status}){said}",
            type=errors.SEARCH_UNAVAILABLE,
            next_retry_delay=retry_after(headers),
        )
    return ApplicationError(
        f"{name} refused the search ({status}){said}", type=errors.SEARCH_BAD_REQUEST, non_retryable=True
    )


def _unwrap_ddg(url: str) -> str:
    """DuckDuckGo's HTML page may wrap a hit as `//duckduckgo.com/l/?uddg=<target>`; keep the target."""
    parts = urlsplit(url)
    if parts.netloc.endswith("duckduckgo.com") and parts.path.startswith("/l/"):
        target = parse_qs(parts.query).get("uddg")
        if target:
            return target[0]
    return url


def normalize_hits(raw: Iterable[tuple[Any, Any, Any]], limit: int) -> list[SearchHit]:
    """(title, url, snippet) triples as a service sent them → hits: whitespace collapsed, only http(s)
    URLs, one hit per URL (fragments ignored), at most `limit`. A missing field is an empty string."""
    hits: list[SearchHit] = []
    seen: set[str] = set()
    for title, url, snippet in raw:
        url = str(url or "").strip()
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            continue
        key = parts._replace(fragment="").geturl()
        if key in seen:
            continue
        seen.add(key)
        hits.append(
            SearchHit(
                title=" ".join(str(title or "").split()),
                url=url,
                snippet=" ".join(str(snippet or "").split()),
            )
        )
        if len(hits) >= limit:
            break
    return hits


class WebSearch:
    """Built once per worker from SearchConfig; holds the Tavily key so it never travels."""

    def __init__(self, config: SearchConfig, telemetry: Telemetry | None = None) -> None:
        self._config = config
        self._telemetry = telemetry or Telemetry()

    def available(self) -> list[str]:
        """The configured backends in the order they are tried; empty means no web search at all."""
        return self._config.backends

    async def search(
        self,
        query: str,
        max_results: int | None = None,
        backend: str | None = None,
        domains: DomainPolicy | None = None,
    ) -> SearchResults:
        """Hits for `query` from the first configured backend that answers; with `domains`, only hits
        the policy allows (Tavily is asked for those domains alone; every backend's hits are filtered,
        and `withheld` counts what was dropped)."""
        query = " ".join(query.split())
        if not query:
            raise ApplicationError(
                "the search query is empty", type=errors.SEARCH_BAD_REQUEST, non_retryable=True
            )
        limit = max_results if max_results is not None else self._config.max_results
        if limit < 1:
            raise ApplicationError(
                f"max_results must be at least 1, not {limit}",
                type=errors.SEARCH_BAD_REQUEST,
                non_retryable=True,
            )
        limit = min(limit, MAX_RESULTS_LIMIT)
        order = self.available()
        if backend is not None:
            if backend not in order:
                offered = ", ".join(order) or "none"
                raise ApplicationError(
                    f"search backend {backend!r} is not configured on this worker (configured: {offered})",
                    type=errors.SEARCH_NOT_CONFIGURED,
                    non_retryable=True,
                )
            order = [backend]
        if not order:
            raise ApplicationError(
                "no web search backend is configured: set TAVILY_API_KEY, CAIRN_SEARXNG_URL or CAIRN_DDG=1",
                type=errors.SEARCH_NOT_CONFIGURED,
                non_retryable=True,
            )
        for position, name in enumerate(order, start=1):
            try:
                hits = await self._one(name, query, limit, domains)
            except ApplicationError as err:
                if err.non_retryable or position == len(order):
                    raise
                log.warning(
                    "%s search failed (%s), trying the next backend: %s", NAMES[name], err.type, err.message
                )
                continue
            kept = [h for h in hits if domains is None or domains.refusal(h.url) is None]
            return SearchResults(query=query, backend=name, hits=kept, withheld=len(hits) - len(kept))
        raise AssertionError("unreachable: the last backend returns or raises")

    async def _one(
        self, backend: str, query: str, limit: int, domains: DomainPolicy | None = None
    ) -> list[SearchHit]:
        with self._telemetry.search(query, backend) as span:
            try:
                # An overall cap: httpx's timeout is per read, and ddgs's per request.
                async with asyncio.timeout(self._config.timeout_seconds + 1):
                    if backend == TAVILY:
                        hits = await self._tavily(query, limit, domains)
                    elif backend == SEARXNG:
                        hits = await self._searxng(query, limit)
                    else:
                        hits = await self._duckduckgo(query, limit)
            except TimeoutError as err:
                failure = ApplicationError(
                    f"{NAMES[backend]} did not answer within {self._config.timeout_seconds:g}s",
                    type=errors.SEARCH_UNAVAILABLE,
                )
                span.set_attribute(ERROR_TYPE, errors.SEARCH_UNAVAILABLE)
                raise failure from err
            except ApplicationError as err:
                span.set_attribute(ERROR_TYPE, err.type or "")
                raise
            span.set_attribute("cairn.search.hits", len(hits))
            return hits

    def _http(self, base_url: str) -> httpx.AsyncClient:
        # No retries of our own (httpx has none by default): Temporal owns retries.
        return httpx.AsyncClient(
            base_url=base_url,
            timeout=self._config.timeout_seconds,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=True,  # an operator's SearxNG behind http→https or a trailing-slash redirect
            event_hooks={"response": [_raise_for_status]},
        )

    async def _tavily(self, query: str, limit: int, domains: DomainPolicy | None = None) -> list[SearchHit]:
        # Tavily takes the policy itself (include_domains, exclude_domains): hits it would otherwise
        # spend on refused domains go to allowed ones.
        scope: dict[str, Any] = {}
        if domains is not None:
            if domains.allowed_only():
                scope["include_domains"] = list(domains.allowed_only())
            if domains.blocked():
                scope["exclude_domains"] = list(domains.blocked())
        try:
            async with self._http(self._config.tavily_url) as http:
                # Handing tavily-python our own httpx client keeps its request building and parsing
                # while the base URL (CAIRN_TAVILY_URL) and the error hook stay ours.
                client = AsyncTavilyClient(api_key=self._config.tavily_api_key, client=http)
                answer: dict[str, Any] = await client.search(
                    query,
                    search_depth="basic",
                    max_results=limit,
                    include_answer=False,
                    include_raw_content=False,
                    timeout=self._config.timeout_seconds,
                    **scope,
                )
        except _StatusError as err:
            raise status_error(TAVILY, err.status, err.headers, err.detail) from err
        except (TavilyTimeout, httpx.TimeoutException) as err:
            raise ApplicationError(f"Tavily timed out: {err}", type=errors.SEARCH_UNAVAILABLE) from err
        except httpx.TransportError as err:
            raise ApplicationError(f"cannot reach Tavily: {err!r}", type=errors.SEARCH_UNAVAILABLE) from err
        except ValueError as err:  # a 200 whose body is not JSON
            raise ApplicationError(
                f"Tavily answered with malformed JSON: {err}", type=errors.SEARCH_UNAVAILABLE
            ) from err
        results = answer.get("results") or []
        return normalize_hits(((r.get("title"), r.get("url"), r.get("content")) for r in results), limit)

    async def _searxng(self, query: str, limit: int) -> list[SearchHit]:
        assert self._config.searxng_url is not None
        try:
            async with self._http(self._config.searxng_url) as http:
                response = await http.get("/search", params={"q": query, "format": "json", "pageno": "1"})
                answer = response.json()
        except _StatusError as err:
            raise status_error(SEARXNG, err.status, err.headers, err.detail) from err
        except httpx.TimeoutException as err:
            raise ApplicationError(f"SearxNG timed out: {err!r}", type=errors.SEARCH_UNAVAILABLE) from err
        except httpx.TransportError as err:
            raise ApplicationError(
                f"cannot reach SearxNG at {self._config.searxng_url}: {err!r}", type=errors.SEARCH_UNAVAILABLE
            ) from err
        except ValueError as err:
            raise ApplicationError(
                f"SearxNG answered with malformed JSON: {err}", type=errors.SEARCH_UNAVAILABLE
            ) from err
        if not isinstance(answer, dict):
            raise ApplicationError(
                "SearxNG answered with something other than a JSON object", type=errors.SEARCH_UNAVAILABLE
            )
        results = answer.get("results") or []
        dead = answer.get("unresponsive_engines") or []
        if not results and dead:
            # Nothing found *because* its engines failed is an outage, not an empty answer.
            engines = ", ".join(
                f"{e[0]} ({e[1]})" if isinstance(e, list) and len(e) > 1 else str(e) for e in dead
            )
            raise ApplicationError(
                f"SearxNG's engines did not answer: {engines}", type=errors.SEARCH_UNAVAILABLE
            )
        return normalize_hits(((r.get("title"), r.get("url"), r.get("content")) for r in results), limit)

    async def _duckduckgo(self, query: str, limit: int) -> list[SearchHit]:
        config = self._config

        def run() -> list[dict[str, Any]]:
            ddgs = DDGS(
                proxy=config.ddg_proxy,
                timeout=max(1, int(config.timeout_seconds)),
                verify=config.ddg_ca_bundle or True,
            )
            # ddgs's own engine for duckduckgo.com only; "auto" would quietly query other engines.
            return ddgs.text(query, backend="duckduckgo", max_results=limit, safesearch="moderate")

        try:
            # ddgs is synchronous (a blocking HTTP client), so it runs in a thread.
            results = await asyncio.to_thread(run)
        except RatelimitException as err:
            raise ApplicationError(
                f"DuckDuckGo is rate limiting: {err}", type=errors.SEARCH_RATE_LIMITED
            ) from err
        except DDGSTimeout as err:
            raise ApplicationError(f"DuckDuckGo timed out: {err}", type=errors.SEARCH_UNAVAILABLE) from err
        except DDGSException as err:
            if str(err) != "No results found.":
                raise ApplicationError(
                    f"DuckDuckGo search failed: {err}", type=errors.SEARCH_UNAVAILABLE
                ) from err
            # ddgs says "No results found." both for a page without hits and for a refused request
            # (DuckDuckGo answers a suspected bot with a non-200 page). They cannot be told apart, so
            # it is treated as a failure: retryable, and the next backend gets a chance.
            raise ApplicationError(
                "DuckDuckGo returned no results (ddgs cannot tell an empty result from a refused request)",
                type=errors.SEARCH_UNAVAILABLE,
            ) from err
        return normalize_hits(
            ((r.get("title"), _unwrap_ddg(r.get("href") or ""), r.get("body")) for r in results), limit
        )

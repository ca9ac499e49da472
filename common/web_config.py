"""How the researcher's web tools are configured: which search backends exist, and how pages are fetched.

Read once by the worker at start-up (like common/config.py), never by workflows. A search backend is
offered to the model only when it is configured here; with none, the researcher works from the corpus
alone. The Tavily key stays on the worker: it is kept out of `repr`, so it never lands in a log line,
and it never enters an activity's input or result.

Fetching refuses private, loopback, link-local and reserved addresses unless `CAIRN_FETCH_ALLOW_PRIVATE`
or `CAIRN_FETCH_ALLOW_HOSTS` says otherwise: a model must not be talked into reading internal services.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.env import ConfigError, base_url, flag, number, positive, whole

TAVILY = "tavily"
SEARXNG = "searxng"
DUCKDUCKGO = "duckduckgo"
# The order backends are tried in when CAIRN_SEARCH_BACKENDS does not say: a keyed API first, then the
# operator's own SearxNG, then DuckDuckGo, which is scraped and the most likely to refuse us.
DEFAULT_ORDER = (TAVILY, SEARXNG, DUCKDUCKGO)
_ALIASES = {"ddg": DUCKDUCKGO, "ddgs": DUCKDUCKGO, "searx": SEARXNG}

TAVILY_API_URL = "https://api.tavily.com"
MAX_RESULTS_LIMIT = 20  # Tavily's own ceiling; more hits than this only fill the model's context.


@dataclass(frozen=True)
class SearchConfig:
    """Which web search backends this worker offers. Construct directly in tests; `from_env` in the
    worker."""

    tavily_api_key: str | None = field(default=None, repr=False)
    tavily_url: str = TAVILY_API_URL
    searxng_url: str | None = None
    duckduckgo: bool = False
    # ddgs speaks to DuckDuckGo's fixed host; an operator behind a proxy (and a TLS-inspecting proxy's
    # CA bundle) sets these. Tests use the same two settings to reach a recorded answer on loopback.
    ddg_proxy: str | None = None
    ddg_ca_bundle: str | None = None
    preference: tuple[str, ...] = ()  # CAIRN_SEARCH_BACKENDS: only these, in this order
    max_results: int = 5
    timeout_seconds: float = 15.0

    def configured(self, backend: str) -> bool:
        if backend == TAVILY:
            return bool(self.tavily_api_key)
        if backend == SEARXNG:
            return bool(self.searxng_url)
        if backend == DUCKDUCKGO:
            return self.duckduckgo
        return False

    @property
    def backends(self) -> list[str]:
        """The configured backends in the order to try them; empty when there are none."""
        order = self.preference or DEFAULT_ORDER
        return [name for name in order if self.configured(name)]

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> SearchConfig:
        env = os.environ if env is None else env
        preference: list[str] = []
        for raw in (env.get("CAIRN_SEARCH_BACKENDS") or "").split(","):
            name = _ALIASES.get(raw.strip().lower(), raw.strip().lower())
            if not name or name in preference:
                continue
            if name not in DEFAULT_ORDER:
                raise ConfigError(
                    f"CAIRN_SEARCH_BACKENDS names an unknown backend {raw.strip()!r}; "
                    f"known: {', '.join(DEFAULT_ORDER)}"
                )
            preference.append(name)
        config = SearchConfig(
            tavily_api_key=env.get("TAVILY_API_KEY") or None,
            tavily_url=base_url(env, "CAIRN_TAVILY_URL") or TAVILY_API_URL,
            searxng_url=base_url(env, "CAIRN_SEARXNG_URL"),
            # DuckDuckGo needs no key, so it would always be "configured": it is opt-in instead, by
            # CAIRN_DDG=1 or by naming it in CAIRN_SEARCH_BACKENDS.
            duckduckgo=flag(env, "CAIRN_DDG") or DUCKDUCKGO in preference,
            ddg_proxy=env.get("CAIRN_DDG_PROXY") or None,
            ddg_ca_bundle=env.get("CAIRN_DDG_CA_BUNDLE") or None,
            preference=tuple(preference),
            max_results=whole(env, "CAIRN_SEARCH_MAX_RESULTS", 5),
            timeout_seconds=number(env, "CAIRN_SEARCH_TIMEOUT_SECONDS", 15.0),
        )
        # A backend asked for by name but not configured is a mistake to report at start-up, not a
        # backend to skip quietly.
        needs = {TAVILY: "TAVILY_API_KEY", SEARXNG: "CAIRN_SEARXNG_URL"}
        for name in preference:
            if not config.configured(name):
                raise ConfigError(f"CAIRN_SEARCH_BACKENDS names {name}, but {needs[name]} is not set")
        if not 1 <= config.max_results <= MAX_RESULTS_LIMIT:
            raise ConfigError(
                f"CAIRN_SEARCH_MAX_RESULTS must be between 1 and {MAX_RESULTS_LIMIT}, not {config.max_results}"
            )
        positive("CAIRN_SEARCH_TIMEOUT_SECONDS", config.timeout_seconds)
        return config


AllowEntry = str | ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_hosts(raw: str) -> tuple[AllowEntry, ...]:
    """CAIRN_FETCH_ALLOW_HOSTS: host names (exact, case-insensitive) and IP addresses or networks
    (`10.1.2.3`, `10.0.0.0/8`) that may be fetched although they are private."""
    entries: list[AllowEntry] = []
    for item in raw.split(","):
        item = item.strip().lower().rstrip(".")
        if not item:
            continue
        try:
            entries.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            entries.append(item)
    return tuple(entries)


@dataclass(frozen=True)
class FetchConfig:
    """Limits of `fetch_url`. Construct directly in tests; `from_env` in the worker."""

    max_bytes: int = 5 * 1024 * 1024  # of body read; more is cut and the page marked truncated
    timeout_seconds: float = 20.0  # for the whole download, redirects included
    max_chars: int = 400_000  # of extracted text handed back
    allow_private: bool = False
    allow_hosts: tuple[AllowEntry, ...] = ()
    max_redirects: int = 5
    # CAIRN_FETCH_CA_BUNDLE: a PEM file of CAs to trust instead of the default roots (a TLS-inspecting
    # proxy's CA, say; tests use a throwaway CA). The environment's SSL_CERT_FILE is not read.
    ca_bundle: str | None = None

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> FetchConfig:
        env = os.environ if env is None else env
        config = FetchConfig(
            max_bytes=whole(env, "CAIRN_FETCH_MAX_BYTES", 5 * 1024 * 1024),
            timeout_seconds=number(env, "CAIRN_FETCH_TIMEOUT_SECONDS", 20.0),
            max_chars=whole(env, "CAIRN_FETCH_MAX_CHARS", 400_000),
            allow_private=flag(env, "CAIRN_FETCH_ALLOW_PRIVATE"),
            allow_hosts=parse_allow_hosts(env.get("CAIRN_FETCH_ALLOW_HOSTS") or ""),
            ca_bundle=env.get("CAIRN_FETCH_CA_BUNDLE") or None,
        )
        positive("CAIRN_FETCH_MAX_BYTES", config.max_bytes)
        positive("CAIRN_FETCH_TIMEOUT_SECONDS", config.timeout_seconds)
        positive("CAIRN_FETCH_MAX_CHARS", config.max_chars)
        return config

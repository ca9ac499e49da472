"""`cairn serve`: the multi-tenant HTTP API, a FastAPI application that is only a Temporal client.

It authenticates each request (client/server/auth.py), checks the caller's role and, for a run, its
tenant (client/server/tenants.py), then turns the request into a start, signal, update or query of the
run's workflow (client/api.py), or a read of the run's event stream (client/server/feeds.py). It keeps
no durable state of its own: runs and their events live in Temporal, keys and the daily ledger in the
database, so any number of processes can serve behind a load balancer and any of them can die.

Security defaults: loopback unless told; every body capped; CORS off unless CAIRN_CORS_ORIGINS names
origins; security headers on every answer; a credential is never logged (uvicorn's access log has no
headers, and nothing here logs one); failed authentications from one address are rate limited, as are
each credential's requests.

The web app for people (client/web) is served here too, at `/`: its pages authenticate with a session
cookie (client/server/sessions.py) that resolves to the same Principal, and reach runs through the
same route functions, so the same role and tenant checks apply.

Must never: let a route reach a run before its tenant is checked, or answer before authenticating
(only /healthz, /readyz, the API's own description, the web app's sign-in pages and its static files
need no credentials).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activities.corpus import Corpus, open_corpus
from client.api import CairnClient
from client.server.auth import Authenticator, AuthError, AuthUnavailable, Principal
from client.server.db import Database, DatabaseUnavailable, open_database
from client.server.feeds import Feeds
from client.server.keys import KeyStore
from client.server.policy import Policies
from client.server.problems import Problem, install, problem_response
from client.server.quotas import Quotas
from client.server.sessions import MAX_SESSION_HOURS, SESSION_HOURS, Session, SessionStore, cookie_name
from client.server.tenants import RunIndex
from common.config import TemporalConfig, cairn_home
from common.env import ConfigError, number, whole
from common.names import SEARCH_ATTR_TENANT
from common.payload_store import reading_as
from common.plugin import connect
from common.version import __version__

log = logging.getLogger("cairn.api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# JSON bodies are a question, a plan or a signal: kilobytes. Uploads have their own cap, the
# corpus's (CAIRN_INGEST_MAX_BYTES, 50 MB by default).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
KEEPALIVE_SECONDS = 15.0
# Failed authentications one client address may make in a minute before it is told to wait.
FAILED_AUTH_PER_MINUTE = 30
UPLOAD_PATH = "/v1/documents"


@dataclass(frozen=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_upload_bytes: int = 50 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    keepalive_seconds: float = KEEPALIVE_SECONDS
    session_hours: float = SESSION_HOURS
    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        from activities.corpus.documents import MAX_BYTES

        env = dict(os.environ if env is None else env)
        origins = tuple(o.strip() for o in env.get("CAIRN_CORS_ORIGINS", "").split(",") if o.strip())
        if "*" in origins:
            raise ConfigError("CAIRN_CORS_ORIGINS must name origins; '*' would let any web page call the API")
        config = cls(
            host=env.get("CAIRN_API_HOST") or DEFAULT_HOST,
            port=whole(env, "CAIRN_API_PORT", DEFAULT_PORT),
            max_body_bytes=whole(env, "CAIRN_API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_upload_bytes=whole(env, "CAIRN_INGEST_MAX_BYTES", MAX_BYTES),
            cors_origins=origins,
            keepalive_seconds=number(env, "CAIRN_SSE_KEEPALIVE_SECONDS", KEEPALIVE_SECONDS),
            session_hours=number(env, "CAIRN_WEB_SESSION_HOURS", SESSION_HOURS),
            env=env,
        )
        if not 0 < config.session_hours <= MAX_SESSION_HOURS:
            raise ConfigError(
                f"CAIRN_WEB_SESSION_HOURS must be more than 0 and at most {MAX_SESSION_HOURS:g} "
                f"(a signed-in browser is a credential), not {config.session_hours:g}"
            )
        return cls(**{**config.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


class Limiter:
    """Requests per minute per credential, and failed authentications per minute per address, in this
    process (each replica counts its own; docs/operations.md)."""

    def __init__(self) -> None:
        self._window = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[int, RateLimitItem] = {}
        self._failures = RateLimitItemPerMinute(FAILED_AUTH_PER_MINUTE)

    def _wait(self, item: RateLimitItem, key: str) -> int:
        reset, _ = self._window.get_window_stats(item, key)
        return max(int(reset - time.time()) + 1, 1)

    def request(self, subject: str, per_minute: int) -> None:
        if per_minute <= 0:
            return
        item = self._items.setdefault(per_minute, RateLimitItemPerMinute(per_minute))
        if not self._window.hit(item, "req", subject):
            raise Problem(
                429,
                f"more than {per_minute} requests a minute with this credential; slow down",
                code="rate_limited",
                headers={"Retry-After": str(self._wait(item, subject))},
            )

    def failed_auth(self, address: str) -> None:
        if not self._window.hit(self._failures, "auth", address):
            raise Problem(
                429,
                "too many failed authentications from this address; wait before trying again",
                code="rate_limited",
                headers={"Retry-After": str(self._wait(self._failures, address))},
            )


@dataclass
class Services:
    """What every request uses, made once per process by the application's lifespan."""

    config: ServerConfig
    cairn: CairnClient
    db: Database
    keys: KeyStore
    auth: Authenticator
    policies: Policies
    quotas: Quotas
    index: RunIndex
    feeds: Feeds
    sessions: SessionStore
    limiter: Limiter = field(default_factory=Limiter)
    _corpus: Corpus | None = None

    @classmethod
    async def start(cls, config: ServerConfig) -> Services:
        env = config.env
        temporal_config = TemporalConfig.from_env(env)
        try:
            temporal = await connect(temporal_config, offload=False, env=env)
        except RuntimeError as err:
            raise ConfigError(f"cannot reach Temporal at {temporal_config.address}: {err}") from None
        cairn = CairnClient(temporal, temporal_config.task_queue, owner_name="cairn-api")
        try:
            registered = await cairn.register_search_attributes()
        except Exception:
            registered = await cairn.registered_search_attributes()
        if SEARCH_ATTR_TENANT not in registered:
            raise ConfigError(
                f"the Temporal namespace has no {SEARCH_ATTR_TENANT} search attribute and this process may "
                f"not add it: `temporal operator search-attribute create --name {SEARCH_ATTR_TENANT} "
                "--type Keyword`, then start again (the API checks every run's tenant by it)"
            )
        policies = Policies.from_env(env)
        db = await open_database(env)
        keys = KeyStore(db)
        quotas = Quotas(temporal, db, policies)
        await quotas.ready()
        return cls(
            config=config,
            cairn=cairn,
            db=db,
            keys=keys,
            auth=Authenticator.from_env(env, keys),
            policies=policies,
            quotas=quotas,
            index=RunIndex(temporal),
            feeds=Feeds(temporal),
            sessions=SessionStore(db, keys, hours=config.session_hours),
        )

    def sandbox_artifacts_root(self) -> Path:
        """Where the workers keep coder steps' artifacts: the API must share that directory (the same
        CAIRN_HOME, or CAIRN_SANDBOX_ARTIFACTS_DIR) to serve them."""
        from activities.sandbox.config import SandboxConfig

        return (
            SandboxConfig.from_env(self.config.env).artifacts_dir or cairn_home(self.config.env) / "artifacts"
        )

    async def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = open_corpus(self.config.env)
        return self._corpus

    async def identify(self, request: Request) -> Principal:
        address = request.client.host if request.client else "unknown"
        try:
            principal = await self.auth.authenticate(request.headers.get("authorization"))
        except AuthError as err:
            self.limiter.failed_auth(address)
            raise Problem(
                401, str(err), code="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="cairn"'}
            ) from None
        except (AuthUnavailable, DatabaseUnavailable) as err:
            raise Problem(503, f"cannot check credentials now: {err}", code="unavailable") from None
        return self._admit(request, principal)

    def _admit(self, request: Request, principal: Principal) -> Principal:
        self.limiter.request(principal.subject, self.policies.of(principal.tenant).requests_per_minute)
        request.state.principal = principal
        # Everything this request decodes comes from its tenant's payload partition, or not at all.
        reading_as.set(principal.tenant)
        return principal

    async def session_of(self, request: Request) -> Session | None:
        """The web app's caller: the live session its cookie names (client/server/sessions.py), with
        the same rate limit and tenant partition as a bearer credential; None when there is none."""
        token = request.cookies.get(cookie_name(secure_request(request, self.config)))
        if not token:
            return None
        try:
            session = await self.sessions.get(token)
        except DatabaseUnavailable as err:
            raise Problem(503, f"cannot check the session now: {err}", code="unavailable") from None
        if session is None:
            return None
        self._admit(request, session.principal)
        return session

    async def close(self) -> None:
        await self.feeds.close()
        await self.auth.close()
        if self._corpus is not None:
            await self._corpus.close()
        await self.db.close()


# -- middleware ----------------------------------------------------------------------------------

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_GUARDED = {name for name, _ in _SECURITY_HEADERS} | {b"content-security-policy"}
_API_CSP = b"default-src 'none'; frame-ancestors 'none'"
# The web app (client/web): its own scripts, styles and images only, nothing inline, forms posting
# only here, no <base>, never framed. Script-free defences come first; this is the backstop.
_WEB_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_API_PREFIXES = ("/v1/", "/healthz", "/readyz", "/openapi.json")
# The web app's pages name themselves to themselves only: with no-referrer, a browser sends
# `Origin: null` on a same-origin form post, and the CSRF check could not tell it from a forgery.
# Other sites still get no referrer (same-origin), and links to sources are rel=noreferrer besides.
_WEB_HEADERS = [(k, b"same-origin" if k == b"referrer-policy" else v) for k, v in _SECURITY_HEADERS]
# The interactive docs page loads Swagger UI from its CDN and starts it with an inline script.
_DOCS_CSP = (
    b"default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src https://cdn.jsdelivr.net; img-src https://fastapi.tiangolo.com data:; "
    b"connect-src 'self'; frame-ancestors 'none'"
)


class Guard:
    """Security headers on every answer, and request bodies capped before a route reads them: a body
    announced too large is refused at once, one that grows too large while it arrives is cut off."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.max_upload if path == UPLOAD_PATH else self.max_body
        web = path != "/docs" and not path.startswith(_API_PREFIXES)
        csp = _DOCS_CSP if path == "/docs" else _WEB_CSP if web else _API_CSP
        security = _WEB_HEADERS if web else _SECURITY_HEADERS

        started = False
        refused = False  # a 413 went out: whatever the application still sends is dropped

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in _GUARDED and k.lower() != b"server"
                ]
                headers += [*security, (b"content-security-policy", csp)]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(limit, send_with_headers)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started:
                        await _too_large(limit, send_with_headers)
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, capped_receive, send_with_headers)


async def _too_large(limit: int, send: Callable[[Message], Awaitable[None]]) -> None:
    response = problem_response(
        Problem(413, f"the request body is larger than {limit:,} bytes", code="too_large")
    )

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    await response({"type": "http", "method": "POST", "headers": []}, no_body, send)


# -- the application -----------------------------------------------------------------------------


def create_app(config: ServerConfig | None = None, services: Services | None = None) -> FastAPI:
    """The application; `services` already started (by `cairn serve`) or started by its lifespan."""
    config = config or ServerConfig.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services or await Services.start(config)
        try:
            yield
        finally:
            await app.state.services.close()

    app = FastAPI(
        title="Cairn",
        version=__version__,
        summary="Durable deep research: start runs, steer their plans, stream their events, read reports.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install(app)
    from client.server import routes

    app.include_router(routes.health)
    app.include_router(routes.runs, prefix="/v1")
    app.include_router(routes.documents, prefix="/v1")
    app.include_router(routes.keys, prefix="/v1")
    from client.server import living_routes

    app.include_router(living_routes.schedules, prefix="/v1")
    app.include_router(living_routes.followups, prefix="/v1")
    app.include_router(living_routes.library, prefix="/v1")
    from client.server import tenant_routes

    app.include_router(tenant_routes.tenant, prefix="/v1")
    from client.web import living as web_living
    from client.web import pages

    pages.install(app)
    app.include_router(web_living.router)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Retry-After", "Location"],
            allow_credentials=False,
        )
    app.add_middleware(Guard, max_body=config.max_body_bytes, max_upload=config.max_upload_bytes)
    return app


def secure_request(request: Request, config: ServerConfig) -> bool:
    """Whether the browser reached us over HTTPS: directly, through a proxy on this machine that said
    so (uvicorn trusts X-Forwarded-Proto from 127.0.0.1), or as CAIRN_PUBLIC_URL declares."""
    public = config.env.get("CAIRN_PUBLIC_URL", "")
    return request.url.scheme == "https" or public.startswith("https://")


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services

"""Browser sessions of the web app: a credential checked once at sign-in, then a cookie that names a
server-side session row.

Why this exists: a person's browser should not keep an API key or a bearer token in script-readable
storage, and an EventSource cannot send an Authorization header. At sign-in the web app checks the
API key or the OIDC token with the API's own Authenticator (client/server/auth.py) and makes a session
here; every later request presents the session's cookie (HttpOnly, SameSite=Strict, Secure behind
HTTPS) and gets the same Principal the credential would have given, so every route's role and tenant
checks are the API's own.

The cookie carries 256 random bits; the database keeps only their sha256 (a leaked database opens no
session) with the principal, the session's CSRF token and its expiry. A session made with an API key
follows the key: revoke the key, or change its role, and its sessions follow at their next request.
Rows live in the API's database (SQLite or PostgreSQL), so a session survives an API restart and is
valid on every API process.

Must never: log or put in an answer a session token; accept an expired session or one whose key was
revoked; let a request that changes anything through without the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from client.server.auth import Principal
from client.server.db import Database
from client.server.keys import KeyStore

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS cairn_web_sessions (
        token_sha256 TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
        subject TEXT NOT NULL,
        via TEXT NOT NULL CHECK (via IN ('key', 'oidc')),
        key_id TEXT NULL,
        csrf TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS cairn_web_sessions_expiry ON cairn_web_sessions (expires_at)",
    # A sign-in with the identity provider under way: the state the provider sends back, the PKCE
    # verifier that only this server knows, and when it stops being usable.
    """CREATE TABLE IF NOT EXISTS cairn_web_logins (
        state_sha256 TEXT PRIMARY KEY,
        verifier TEXT NOT NULL,
        next_path TEXT NOT NULL,
        expires_at TEXT NOT NULL)""",
)
SESSION_HOURS: Final = 12.0  # CAIRN_WEB_SESSION_HOURS: how long a web sign-in lasts.
MAX_SESSION_HOURS: Final = 24.0 * 30
LOGIN_MINUTES: Final = 10.0
COOKIE: Final = "cairn_session"
# Behind HTTPS the cookie takes the __Host- prefix: the browser then insists on Secure, Path=/ and no
# Domain, so no sibling host can plant or overwrite it.
SECURE_COOKIE: Final = "__Host-cairn_session"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> datetime:
    return datetime.now(UTC)


def cookie_name(secure: bool) -> str:
    return SECURE_COOKIE if secure else COOKIE


@dataclass(frozen=True)
class Session:
    principal: Principal
    csrf: str
    expires_at: datetime

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, presented or "")


@dataclass(frozen=True)
class PendingLogin:
    verifier: str
    next_path: str


class SessionStore:
    def __init__(self, db: Database, keys: KeyStore, hours: float = SESSION_HOURS) -> None:
        self.db = db
        self.keys = keys
        self.lifetime = timedelta(hours=hours)

    async def _ready(self) -> None:
        await self.db.ensure_schema("cairn_web_sessions", SCHEMA)

    async def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session for `principal`: the cookie's token (shown this once) and the session."""
        await self._ready()
        token = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), _now() + self.lifetime)
        await self.db.execute(
            "INSERT INTO cairn_web_sessions (token_sha256, tenant, role, subject, via, key_id, csrf, "
            "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _digest(token),
                principal.tenant,
                principal.role,
                principal.subject,
                principal.via,
                principal.key_id,
                session.csrf,
                _stamp(_now()),
                _stamp(session.expires_at),
            ),
        )
        return token, session

    async def get(self, token: str | None) -> Session | None:
        """The live session the cookie names, or None (no cookie, unknown, expired, key revoked)."""
        if not token or len(token) > 200:
            return None
        await self._ready()
        row = await self.db.fetchone(
            "SELECT tenant, role, subject, via, key_id, csrf, expires_at FROM cairn_web_sessions "
            "WHERE token_sha256 = ?",
            (_digest(token),),
        )
        if row is None:
            return None
        tenant, role, subject, via, key_id, csrf, expires = row
        expires_at = datetime.fromisoformat(str(expires))
        if expires_at <= _now():
            await self.end(token)
            return None
        if via == "key":
            # The key's record decides, now: a revoked key ends its sessions, a changed role applies.
            key = await self.keys.get(str(key_id))
            if key is None or not key.active or key.tenant != tenant:
                await self.end(token)
                return None
            role = key.role
        principal = Principal(tenant=tenant, role=role, subject=subject, via=via, key_id=key_id)
        return Session(principal, str(csrf), expires_at)

    async def end(self, token: str | None) -> None:
        if token:
            await self._ready()
            await self.db.execute("DELETE FROM cairn_web_sessions WHERE token_sha256 = ?", (_digest(token),))

    async def sweep(self) -> None:
        """Forget expired sessions and sign-ins (called now and then at sign-in)."""
        await self._ready()
        now = _stamp(_now())
        await self.db.execute("DELETE FROM cairn_web_sessions WHERE expires_at < ?", (now,))
        await self.db.execute("DELETE FROM cairn_web_logins WHERE expires_at < ?", (now,))

    async def begin_login(self, state: str, verifier: str, next_path: str) -> None:
        await self._ready()
        expires = _now() + timedelta(minutes=LOGIN_MINUTES)
        await self.db.execute(
            "INSERT INTO cairn_web_logins (state_sha256, verifier, next_path, expires_at) VALUES (?, ?, ?, ?)",
            (_digest(state), verifier, next_path, _stamp(expires)),
        )

    async def take_login(self, state: str) -> PendingLogin | None:
        """The sign-in `state` names, used up: a state answers once, and only within its time."""
        if not state or len(state) > 200:
            return None
        await self._ready()
        row = await self.db.fetchone(
            "SELECT verifier, next_path, expires_at FROM cairn_web_logins WHERE state_sha256 = ?",
            (_digest(state),),
        )
        if row is None:
            return None
        removed = await self.db.execute(
            "DELETE FROM cairn_web_logins WHERE state_sha256 = ?", (_digest(state),)
        )
        if removed != 1 or datetime.fromisoformat(str(row[2])) <= _now():
            return None  # Another request took it first, or it is too old.
        return PendingLogin(verifier=str(row[0]), next_path=str(row[1]))

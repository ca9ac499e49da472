"""API keys: who may call the API without an identity provider, for which tenant, in which role.

A key reads `cairn_<id>_<secret>`: `id` is 12 lower-case hex digits, public, and names the key in
lists, logs and revocations; `secret` is 43 characters of `secrets.token_urlsafe(32)` (256 bits). The
database keeps `sha256(secret)` and never the key: a leaked database opens no door, and a secret of 256
random bits needs no slow hash. Verification looks the id up and compares digests in constant time; a
malformed key, an unknown id and a revoked key are all simply "no key".

Must never: store, log or put in an error a key or its secret; tell a caller whether an id exists; let
bookkeeping (the last-used time) fail or slow a verification.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, get_args

from client.server.db import Database, open_database
from common.tenancy import valid_tenant

Role = Literal["admin", "member", "viewer"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)

KEY_PREFIX: Final = "cairn_"
_ID_CHARS: Final = 12
_SECRET_BYTES: Final = 32
KEY_PATTERN: Final = re.compile(r"^cairn_([0-9a-f]{12})_([A-Za-z0-9_-]{43,128})$")
ID_PATTERN: Final = re.compile(r"^[0-9a-f]{12}$")
MAX_NAME_CHARS: Final = 100
# A key seen again within this time is not written again: one UPDATE a minute per key at most.
TOUCH_INTERVAL: Final = timedelta(minutes=1)
# What an unknown id's secret is compared with, so that path costs what a known id's does.
_NO_DIGEST: Final = hashlib.sha256(b"cairn: no such key").hexdigest()

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS cairn_api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
        name TEXT NOT NULL DEFAULT '',
        secret_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT NULL,
        last_used_at TEXT NULL)""",
    "CREATE INDEX IF NOT EXISTS cairn_api_keys_tenant ON cairn_api_keys (tenant)",
)
_COLUMNS: Final = "id, tenant, role, name, created_at, revoked_at, last_used_at"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiKey:
    """A key as the store describes it: everything but the secret, which only its holder has."""

    id: str
    tenant: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _stamp(moment: datetime) -> str:
    """Times are stored as fixed-width UTC ISO text: the same in both databases, ordered as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _time(value: object) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _api_key(row: tuple[object, ...]) -> ApiKey:
    created = _time(row[4])
    assert created is not None, "created_at is NOT NULL"
    role = str(row[2])
    assert role in ROLES, "the table's CHECK admits only known roles"
    return ApiKey(
        id=str(row[0]),
        tenant=str(row[1]),
        role=role,  # type: ignore[arg-type]  # Checked just above.
        name=str(row[3]),
        created_at=created,
        revoked_at=_time(row[5]),
        last_used_at=_time(row[6]),
    )


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    match = KEY_PATTERN.match(presented) if isinstance(presented, str) else None
    return (match[1], match[2]) if match else None


def valid_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"{str(role)[:40]!r} is not a role: one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]  # One of ROLES, checked above.


def valid_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"a key's name is at most {MAX_NAME_CHARS} printable characters")
    return name


class KeyStore:
    """The `cairn_api_keys` table. Safe to share among a process's requests."""

    def __init__(self, db: Database, *, owns_db: bool = False) -> None:
        self.db = db
        self._owns_db = owns_db
        self._touched: dict[str, float] = {}  # key id -> monotonic time of its last UPDATE from here
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, env: Mapping[str, str] | None = None) -> KeyStore:
        """A store on this process's database (open_database); close() closes that database too."""
        return cls(await open_database(env), owns_db=True)

    async def _ready(self) -> None:
        await self.db.ensure_schema("cairn_api_keys", SCHEMA)

    async def create(self, tenant: str, role: Role, name: str = "") -> tuple[str, ApiKey]:
        """A new key for `tenant`: the plaintext (shown to its holder once, never stored) and its record.
        ValueError for a tenant, role or name that is not valid."""
        key = ApiKey(
            id=secrets.token_hex(_ID_CHARS // 2),
            tenant=valid_tenant(tenant),
            role=valid_role(role),
            name=valid_name(name),
            created_at=datetime.now(UTC),
        )
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        await self._ready()
        await self.db.execute(
            "INSERT INTO cairn_api_keys (id, tenant, role, name, secret_sha256, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.tenant, key.role, key.name, digest(secret), _stamp(key.created_at)),
        )
        return f"{KEY_PREFIX}{key.id}_{secret}", key

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of `tenant`, when given), revoked ones too, oldest first."""
        await self._ready()
        if tenant is None:
            rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM cairn_api_keys ORDER BY created_at, id")
        else:
            rows = await self.db.fetchall(
                f"SELECT {_COLUMNS} FROM cairn_api_keys WHERE tenant = ? ORDER BY created_at, id",
                (valid_tenant(tenant),),
            )
        return [_api_key(r) for r in rows]

    async def get(self, key_id: str) -> ApiKey | None:
        if not isinstance(key_id, str) or not ID_PATTERN.match(key_id):
            return None
        await self._ready()
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM cairn_api_keys WHERE id = ?", (key_id,))
        return None if row is None else _api_key(row)

    async def revoke(self, key_id: str, *, tenant: str | None = None) -> bool:
        """Revoke an active key (only one of `tenant`'s, when given); False if there is none such.
        Takes effect at the next request: verification reads the table every time."""
        if not isinstance(key_id, str) or not ID_PATTERN.match(key_id):
            return False
        await self._ready()
        sql = "UPDATE cairn_api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        params: tuple[str, ...] = (_stamp(datetime.now(UTC)), key_id)
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", (*params, tenant)
        return await self.db.execute(sql, params) == 1

    async def verify(self, presented: str) -> ApiKey | None:
        """The active key `presented` is, or None (malformed, unknown or revoked: the caller learns no
        more). DatabaseUnavailable when the table cannot be read."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        await self._ready()
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS}, secret_sha256 FROM cairn_api_keys WHERE id = ?", (key_id,)
        )
        stored = str(row[7]) if row is not None else _NO_DIGEST
        matches = hmac.compare_digest(stored.encode(), digest(secret).encode())
        if row is None or not matches:
            return None
        key = _api_key(row[:7])
        if not key.active:
            return None
        self._touch(key.id)
        return key

    def _touch(self, key_id: str) -> None:
        """Record that the key was used, at most once a minute per key and in the background: the
        last-used time is bookkeeping for people, and a request never waits for it or fails by it."""
        now = time.monotonic()
        if now - self._touched.get(key_id, float("-inf")) < TOUCH_INTERVAL.total_seconds():
            return
        self._touched[key_id] = now
        task = asyncio.create_task(self._write_last_used(key_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_last_used(self, key_id: str) -> None:
        moment = datetime.now(UTC)
        try:
            # The WHERE keeps other API processes to the same once a minute.
            await self.db.execute(
                "UPDATE cairn_api_keys SET last_used_at = ? WHERE id = ? "
                "AND (last_used_at IS NULL OR last_used_at < ?)",
                (_stamp(moment), key_id, _stamp(moment - TOUCH_INTERVAL)),
            )
        except Exception as err:  # Bookkeeping only (see _touch); the failure is logged, not hidden.
            log.warning("could not record the last use of API key %s: %s", key_id, err)

    async def close(self) -> None:
        """Finish pending last-used writes, then close the database if this store opened it."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._owns_db:
            await self.db.close()

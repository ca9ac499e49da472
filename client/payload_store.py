"""Cairn's payload store: large payloads (fetched pages, search results, long reports) live outside
Temporal's history, which keeps only a small reference to each.

The SDK's external storage (`temporalio.converter.ExternalStorage`) calls a `StorageDriver` for every
payload above a size threshold; these are Cairn's drivers. Files under `CAIRN_HOME/payloads` for the
embedded default; PostgreSQL through psycopg when `DATABASE_URL` is set (every worker and client of a
deployment then reads what any of them wrote). Payloads are content-addressed (SHA-256), so a retried
activity or a replayed workflow task that stores the same bytes writes nothing new.

Both the worker and every client must use the same store, or one cannot read the other's payloads; that
is why client/connection.py builds it. Must never: hold a secret in a claim (claims land in history),
or lose a payload silently: a missing payload is an error that names what is missing and where.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverSelectContext,
    StorageDriverStoreContext,
)

from common.config import ConfigError, cairn_home

DEFAULT_THRESHOLD_BYTES = 16 * 1024


class FileDriver(StorageDriver):
    def __init__(self, root: Path) -> None:
        self._root = root

    def name(self) -> str:
        return "cairn-files"

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a payload key: {key[:80]!r}")
        return self._root / key[:2] / key

    def _write(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{key}.{os.getpid()}.part")
            partial.write_bytes(data)
            partial.replace(path)  # Atomic: a reader sees the whole payload or none.
        return key

    def _read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"payload {key} is not in {self._root}: this process must use the CAIRN_HOME (or "
                "DATABASE_URL) of the worker that wrote it"
            ) from None

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        keys = await asyncio.to_thread(lambda: [self._write(p.SerializeToString()) for p in payloads])
        return [StorageDriverClaim(claim_data={"key": k}) for k in keys]

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        blobs = await asyncio.to_thread(lambda: [self._read(c.claim_data["key"]) for c in claims])
        return [Payload.FromString(b) for b in blobs]


class PostgresDriver(StorageDriver):
    """One table, `cairn_payloads`, created on first use. A connection is opened per batch: payload
    traffic is a few calls per activity, and this keeps no connection state to go stale."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._ready = False

    def name(self) -> str:
        return "cairn-postgres"

    async def _connect(self):  # type: ignore[no-untyped-def]
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        if not self._ready:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS cairn_payloads "
                "(key text PRIMARY KEY, data bytea NOT NULL, stored_at timestamptz NOT NULL DEFAULT now())"
            )
            self._ready = True
        return conn

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        blobs = [p.SerializeToString() for p in payloads]
        keys = [hashlib.sha256(b).hexdigest() for b in blobs]
        async with await self._connect() as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO cairn_payloads (key, data) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                    list(zip(keys, blobs, strict=True)),
                )
        return [StorageDriverClaim(claim_data={"key": k}) for k in keys]

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        keys = [c.claim_data["key"] for c in claims]
        async with await self._connect() as conn:
            cur = await conn.execute("SELECT key, data FROM cairn_payloads WHERE key = ANY(%s)", (keys,))
            found = {key: bytes(data) for key, data in await cur.fetchall()}
        missing = [k for k in keys if k not in found]
        if missing:
            raise LookupError(f"payloads {missing} are not in the PostgreSQL payload store (DATABASE_URL)")
        return [Payload.FromString(found[k]) for k in keys]


def external_storage(env: Mapping[str, str] | None = None) -> ExternalStorage:
    """The store this process uses: PostgreSQL when DATABASE_URL is set, else files in CAIRN_HOME.
    With PostgreSQL the file driver stays registered (for reading only), so runs from before the
    switch still load. CAIRN_PAYLOAD_THRESHOLD_BYTES sets the size above which a payload goes out;
    CAIRN_PAYLOAD_DIR moves the files from CAIRN_HOME/payloads."""
    env = os.environ if env is None else env
    raw = env.get("CAIRN_PAYLOAD_THRESHOLD_BYTES") or str(DEFAULT_THRESHOLD_BYTES)
    try:
        threshold = int(raw)
    except ValueError as err:
        raise ConfigError(f"CAIRN_PAYLOAD_THRESHOLD_BYTES={raw!r} is not a whole number") from err
    files = FileDriver(Path(env.get("CAIRN_PAYLOAD_DIR") or cairn_home(env) / "payloads"))
    dsn = env.get("DATABASE_URL")
    if not dsn:
        return ExternalStorage(drivers=[files], payload_size_threshold=threshold)
    postgres = PostgresDriver(dsn)

    def choose(context: StorageDriverSelectContext, payload: Payload) -> StorageDriver:
        return postgres

    return ExternalStorage(
        drivers=[postgres, files], driver_selector=choose, payload_size_threshold=threshold
    )

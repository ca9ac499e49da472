"""Cairn's payload store: large payloads (fetched pages, search results, long reports) live outside
Temporal's history, which keeps only a small reference to each.

The SDK's external storage (`temporalio.converter.ExternalStorage`) calls a `StorageDriver` for every
payload above a size threshold; these are Cairn's drivers. Files under `CAIRN_HOME/payloads` for the
embedded default; PostgreSQL through psycopg when `DATABASE_URL` is set (every worker and client of a
deployment then reads what any of them wrote). Payloads are content-addressed (SHA-256), so a retried
activity or a replayed workflow task that stores the same bytes writes nothing new.

Workers write to the store; clients only read from it (their signals and updates stay inline, bounded by
the models and by the server's blob size limit), so a client whose store a worker cannot see never leaves
a reference the worker cannot follow. A reference that cannot be followed (forged, or written to a store
this process cannot read) resolves to a stand-in whose decoding fails with the reason: the one signal,
update or query that carried it fails or is dropped, and the workflow task never does.

Must never: hold a secret in a claim (claims land in history), lose a payload silently (a missing payload
is an error that names what is missing and where), or fail a workflow task over a reference it was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.api.sdk.v1.external_storage_pb2 import ExternalStorageReference
from temporalio.converter import (
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverSelectContext,
    StorageDriverStoreContext,
)

from common.config import cairn_home
from common.env import whole

DEFAULT_THRESHOLD_BYTES = 16 * 1024
# A payload that could not be had: its data is the reason. No converter knows this encoding, and Cairn's
# data converter (common/plugin.py) turns it into a non-retryable PayloadUnavailable error.
UNRESOLVED_ENCODING = b"cairn/unresolved-payload"


def unresolved(problem: str) -> Payload:
    return Payload(metadata={"encoding": UNRESOLVED_ENCODING}, data=problem.encode()[:2000])


def _key_of(claim: StorageDriverClaim) -> str | None:
    key = claim.claim_data.get("key") if isinstance(claim.claim_data, dict) else None
    return (
        key if isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key) else None
    )


class FileDriver(StorageDriver):
    def __init__(self, root: Path) -> None:
        self._root = root

    def name(self) -> str:
        return "cairn-files"

    def _path(self, key: str) -> Path:
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

    def _read(self, claim: StorageDriverClaim) -> Payload:
        key = _key_of(claim)
        if key is None:
            return unresolved(f"not a payload reference of Cairn's: {str(claim.claim_data)[:100]}")
        try:
            return Payload.FromString(self._path(key).read_bytes())
        except FileNotFoundError:
            return unresolved(
                f"payload {key} is not in {self._root}: this process must use the CAIRN_HOME (or "
                "DATABASE_URL) of the worker that wrote it"
            )

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        keys = await asyncio.to_thread(lambda: [self._write(p.SerializeToString()) for p in payloads])
        return [StorageDriverClaim(claim_data={"key": k}) for k in keys]

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return await asyncio.to_thread(lambda: [self._read(c) for c in claims])


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
        keys = [_key_of(c) for c in claims]
        wanted = [k for k in keys if k is not None]
        found: dict[str, bytes] = {}
        if wanted:
            # A database that does not answer raises: that passes, and the workflow task is retried.
            async with await self._connect() as conn:
                cur = await conn.execute(
                    "SELECT key, data FROM cairn_payloads WHERE key = ANY(%s)", (wanted,)
                )
                found = {key: bytes(data) for key, data in await cur.fetchall()}
        return [
            Payload.FromString(found[k])
            if k is not None and k in found
            else unresolved(
                f"payload {k} is not in the PostgreSQL payload store (DATABASE_URL)"
                if k
                else "not a payload reference of Cairn's"
            )
            for k in keys
        ]


class _Unresolvable(StorageDriver):
    """Answers every claim with the stand-in: for references naming a driver this process lacks, or
    not parsing as a reference at all. Never chosen to store anything."""

    def __init__(self, problem: str) -> None:
        self._problem = problem

    def name(self) -> str:
        return "cairn-unresolvable"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        raise RuntimeError("the unresolvable driver stores nothing")

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return [unresolved(self._problem) for _ in claims]


class CairnExternalStorage(ExternalStorage):
    """The SDK's external storage, except that a reference this process cannot follow (a made-up
    driver name, a malformed reference) resolves to the stand-in instead of raising. The SDK's
    hooks for this are private; tests/test_hardening.py forges each kind of reference against them."""

    def _decode_reference(self, payload: Payload) -> ExternalStorageReference | None:
        try:
            return super()._decode_reference(payload)
        except Exception as err:
            return ExternalStorageReference(
                driver_name=f"malformed reference ({type(err).__name__}: {str(err)[:200]})"
            )

    def _get_driver_by_name(self, name: str) -> StorageDriver:
        found = self._driver_map.get(name)
        if found is not None:
            return found
        if name.startswith("malformed reference"):
            return _Unresolvable(f"a {name}")
        return _Unresolvable(f"no payload store named {name[:100]!r} in this process")


def external_storage(env: Mapping[str, str] | None = None, *, offload: bool = True) -> ExternalStorage:
    """The store this process uses: PostgreSQL when DATABASE_URL is set, else files in CAIRN_HOME.
    With PostgreSQL the file driver stays registered (for reading only), so runs from before the
    switch still load. CAIRN_PAYLOAD_THRESHOLD_BYTES sets the size above which a payload goes out;
    CAIRN_PAYLOAD_DIR moves the files from CAIRN_HOME/payloads. Without `offload` (clients) nothing
    is stored, only read."""
    env = os.environ if env is None else env
    threshold = whole(env, "CAIRN_PAYLOAD_THRESHOLD_BYTES", DEFAULT_THRESHOLD_BYTES)
    files = FileDriver(Path(env.get("CAIRN_PAYLOAD_DIR") or cairn_home(env) / "payloads"))
    dsn = env.get("DATABASE_URL")
    drivers: list[StorageDriver] = [files] if not dsn else [PostgresDriver(dsn), files]

    def choose(context: StorageDriverSelectContext, payload: Payload) -> StorageDriver | None:
        return drivers[0] if offload else None

    return CairnExternalStorage(drivers=drivers, driver_selector=choose, payload_size_threshold=threshold)

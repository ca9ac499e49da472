"""Cairn's payload store: large payloads (fetched pages, search results, long reports) live outside
Temporal's history, which keeps only a small reference to each.

The SDK's external storage (`temporalio.converter.ExternalStorage`) calls a `StorageDriver` for every
payload above a size threshold; these are Cairn's drivers. Files under `CAIRN_HOME/payloads` for the
embedded default; PostgreSQL through psycopg when `DATABASE_URL` is set (every worker and client of a
deployment then reads what any of them wrote). Payloads are content-addressed (SHA-256), so a retried
activity or a replayed workflow task that stores the same bytes writes nothing new.

Each tenant's runs store into a partition of their own (files under `tenants/<t>/`, rows keyed
`<t>/<digest>`), chosen by the tenant their workflow id names (common/tenancy.py tenant_of_run_id); a
reference says which partition it points into. The API reads only the partition of the tenant it is
answering (`reading_as`): a reference into another one resolves to the stand-in.

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
from contextvars import ContextVar
from dataclasses import dataclass
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
    StorageDriverWorkflowInfo,
)

from common.config import cairn_home
from common.env import whole
from common.tenancy import DEFAULT_TENANT, TENANT_PATTERN, tenant_of_run_id

DEFAULT_THRESHOLD_BYTES = 16 * 1024
# A payload that could not be had: its data is the reason. No converter knows this encoding, and Cairn's
# data converter (common/plugin.py) turns it into a non-retryable PayloadUnavailable error.
UNRESOLVED_ENCODING = b"cairn/unresolved-payload"


def unresolved(problem: str) -> Payload:
    return Payload(metadata={"encoding": UNRESOLVED_ENCODING}, data=problem.encode()[:2000])


# The tenant on whose behalf this process reads payloads now: the API sets it for each request, so a
# reference to another tenant's payload resolves to the stand-in even if one ever reached it. None (a
# worker, the CLI) reads every partition.
reading_as: ContextVar[str | None] = ContextVar("cairn_payloads_reading_as", default=None)


@dataclass(frozen=True)
class _Ref:
    """A stored payload: its SHA-256 and the tenant whose partition holds it."""

    tenant: str
    key: str

    @property
    def row(self) -> str:
        """Its key in PostgreSQL: the digest, after `<tenant>/` outside the default partition."""
        return self.key if self.tenant == DEFAULT_TENANT else f"{self.tenant}/{self.key}"

    def claim(self) -> StorageDriverClaim:
        extra = {} if self.tenant == DEFAULT_TENANT else {"tenant": self.tenant}
        return StorageDriverClaim(claim_data={"key": self.key, **extra})


def _ref_of(claim: StorageDriverClaim) -> _Ref | None:
    data = claim.claim_data if isinstance(claim.claim_data, dict) else {}
    key, tenant = data.get("key"), data.get("tenant", DEFAULT_TENANT)
    if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
        return None
    if not (isinstance(tenant, str) and TENANT_PATTERN.match(tenant)):
        return None
    return _Ref(tenant, key)


def _partition(context: StorageDriverStoreContext) -> str:
    """The tenant whose partition a payload goes to: the one its run's workflow id names. Payloads a
    workflow stores, and those of the activities and children it runs, have the workflow as target."""
    target = context.target
    workflow_id = target.id if isinstance(target, StorageDriverWorkflowInfo) else None
    return tenant_of_run_id(workflow_id) if workflow_id else DEFAULT_TENANT


def _refused(ref: _Ref) -> Payload | None:
    """The stand-in for a payload of a tenant this process is not reading for, else None."""
    current = reading_as.get()
    if current is not None and ref.tenant != current:
        return unresolved("this payload belongs to another tenant's run")
    return None


class FileDriver(StorageDriver):
    """Files under the root: `<k[:2]>/<k>` for the default tenant's runs, `tenants/<t>/<k[:2]>/<k>`
    for another tenant's."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def name(self) -> str:
        return "cairn-files"

    def _path(self, ref: _Ref) -> Path:
        base = self._root if ref.tenant == DEFAULT_TENANT else self._root / "tenants" / ref.tenant
        return base / ref.key[:2] / ref.key

    def _write(self, tenant: str, data: bytes) -> _Ref:
        ref = _Ref(tenant, hashlib.sha256(data).hexdigest())
        path = self._path(ref)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{ref.key}.{os.getpid()}.part")
            partial.write_bytes(data)
            partial.replace(path)  # Atomic: a reader sees the whole payload or none.
        else:
            # Stored again (by another run, say): young again, so the retention sweep, which deletes
            # only old payloads no open run references, cannot take it from under the new user.
            try:
                os.utime(path)
            except FileNotFoundError:
                return self._write(tenant, data)  # Swept at this very moment: write it again.
        return ref

    def _read(self, claim: StorageDriverClaim) -> Payload:
        ref = _ref_of(claim)
        if ref is None:
            return unresolved(f"not a payload reference of Cairn's: {str(claim.claim_data)[:100]}")
        refused = _refused(ref)
        if refused is not None:
            return refused
        try:
            return Payload.FromString(self._path(ref).read_bytes())
        except FileNotFoundError:
            return unresolved(
                f"payload {ref.key} is not in {self._root}: this process must use the CAIRN_HOME (or "
                "DATABASE_URL) of the worker that wrote it"
            )

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        tenant = _partition(context)
        refs = await asyncio.to_thread(lambda: [self._write(tenant, p.SerializeToString()) for p in payloads])
        return [ref.claim() for ref in refs]

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return await asyncio.to_thread(lambda: [self._read(c) for c in claims])


class PostgresDriver(StorageDriver):
    """One table, `cairn_payloads`, created on first use, keyed by digest (`<tenant>/<digest>` outside
    the default partition). A connection is opened per batch: payload traffic is a few calls per
    activity, and this keeps no connection state to go stale."""

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
        tenant = _partition(context)
        blobs = [p.SerializeToString() for p in payloads]
        refs = [_Ref(tenant, hashlib.sha256(b).hexdigest()) for b in blobs]
        async with await self._connect() as conn:
            async with conn.cursor() as cur:
                await cur.executemany(
                    # Stored again: young again (see FileDriver._write).
                    "INSERT INTO cairn_payloads (key, data) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET stored_at = now()",
                    [(ref.row, blob) for ref, blob in zip(refs, blobs, strict=True)],
                )
        return [ref.claim() for ref in refs]

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        refs = [_ref_of(c) for c in claims]
        wanted = [r.row for r in refs if r is not None and _refused(r) is None]
        found: dict[str, bytes] = {}
        if wanted:
            # A database that does not answer raises: that passes, and the workflow task is retried.
            async with await self._connect() as conn:
                cur = await conn.execute(
                    "SELECT key, data FROM cairn_payloads WHERE key = ANY(%s)", (wanted,)
                )
                found = {key: bytes(data) for key, data in await cur.fetchall()}
        answers = []
        for ref in refs:
            if ref is None:
                answers.append(unresolved("not a payload reference of Cairn's"))
            elif (refused := _refused(ref)) is not None:
                answers.append(refused)
            elif ref.row in found:
                answers.append(Payload.FromString(found[ref.row]))
            else:
                answers.append(
                    unresolved(f"payload {ref.key} is not in the PostgreSQL payload store (DATABASE_URL)")
                )
        return answers


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

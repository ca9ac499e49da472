"""Deleting from the payload store: one tenant's whole partition (erasure), or the payloads of a
partition older than a cutoff that no open run still references (the retention sweep).

Payloads are content-addressed and shared by whatever stored the same bytes, so a payload belongs to no
single run: what an open run (running, or paused waiting for a person) still needs is found by reading
the references in its history (`referenced`), and those are kept whatever their age.

Must never: delete outside the named tenant's partition (the default tenant's is the store's root, and
its files are told apart from the `tenants/` tree), or delete a payload named in `keep`.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.converter import StorageDriverClaim

from common.config import cairn_home
from common.payload_store import _ref_of, external_storage
from common.tenancy import DEFAULT_TENANT, valid_tenant

_PAYLOAD = Payload.DESCRIPTOR.full_name


@dataclass
class Tally:
    count: int = 0
    bytes: int = 0

    def add(self, other: Tally) -> None:
        self.count += other.count
        self.bytes += other.bytes


def payload_root(env: Mapping[str, str]) -> Path:
    return Path(env.get("CAIRN_PAYLOAD_DIR") or cairn_home(env) / "payloads")


def _partition_dir(env: Mapping[str, str], tenant: str) -> Path:
    root = payload_root(env)
    return root if tenant == DEFAULT_TENANT else root / "tenants" / valid_tenant(tenant)


def _payloads(message: Any) -> Iterator[Payload]:
    """Every Payload inside a protobuf message (a history event), however deeply nested."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        items: Iterable[object]
        if hasattr(value, "ListFields"):  # a message
            items = [value]
        elif hasattr(value, "values") and callable(value.values):
            items = value.values()  # a map field
        else:
            items = value  # a repeated field
        for item in items:
            if isinstance(item, Payload):
                yield item
            elif hasattr(item, "ListFields"):
                yield from _payloads(item)


def referenced(events: Iterable[Any], env: Mapping[str, str] | None = None) -> set[tuple[str, str]]:
    """The (tenant, digest) of every stored payload the events refer to."""
    storage = external_storage(env, offload=False)
    found: set[tuple[str, str]] = set()
    for event in events:
        for payload in _payloads(event):
            reference = storage._decode_reference(payload)
            if reference is None:
                continue
            ref = _ref_of(StorageDriverClaim(claim_data=dict(reference.claim_data)))
            if ref is not None:
                found.add((ref.tenant, ref.key))
    return found


def _file_key(path: Path) -> str | None:
    name = path.name
    return name if len(name) == 64 and path.parent.name == name[:2] else None


def _sweep_files(directory: Path, cutoff: float | None, keep: set[str]) -> Tally:
    tally = Tally()
    if not directory.is_dir():
        return tally
    for shard in directory.iterdir():
        if shard.name == "tenants" or not shard.is_dir():
            continue  # Other tenants' partitions live under the default one's root.
        for path in shard.iterdir():
            key = _file_key(path)
            if key is None or key in keep:
                continue
            info = path.stat()
            if cutoff is not None and info.st_mtime >= cutoff:
                continue
            path.unlink(missing_ok=True)
            tally.count += 1
            tally.bytes += info.st_size
    return tally


async def _sweep_rows(dsn: str, tenant: str, cutoff: datetime | None, keep: set[str]) -> Tally:
    import psycopg

    prefix = "" if tenant == DEFAULT_TENANT else f"{valid_tenant(tenant)}/"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        exists = await (await conn.execute("SELECT to_regclass('cairn_payloads') IS NOT NULL")).fetchone()
        if not exists or not exists[0]:
            return Tally()
        # The default partition's keys are bare digests (no '/'); another's start with '<tenant>/'.
        where = "position('/' in key) = 0" if not prefix else "left(key, %(n)s) = %(prefix)s"
        if cutoff is not None:
            where += " AND stored_at < %(cutoff)s"
        rows = await (
            await conn.execute(
                f"SELECT key, octet_length(data) FROM cairn_payloads WHERE {where}",
                {"n": len(prefix), "prefix": prefix, "cutoff": cutoff},
            )
        ).fetchall()
        gone = [(key, size) for key, size in rows if key[len(prefix) :] not in keep]
        if gone:
            await conn.execute("DELETE FROM cairn_payloads WHERE key = ANY(%s)", ([k for k, _ in gone],))
        return Tally(len(gone), sum(int(size) for _, size in gone))


async def sweep_partition(env: Mapping[str, str], tenant: str, cutoff: datetime, keep: set[str]) -> Tally:
    """Delete `tenant`'s payloads stored before `cutoff` whose digest is not in `keep`."""
    tally = await asyncio.to_thread(_sweep_files, _partition_dir(env, tenant), cutoff.timestamp(), keep)
    dsn = env.get("DATABASE_URL")
    if dsn:
        tally.add(await _sweep_rows(dsn, tenant, cutoff, keep))
    return tally


async def erase_partition(env: Mapping[str, str], tenant: str) -> Tally:
    """Delete every payload of `tenant` (never the default tenant's: its partition is the root)."""
    if tenant == DEFAULT_TENANT:
        raise ValueError(
            "the default tenant's payloads are the store's root and cannot be erased as a partition"
        )
    tally = await asyncio.to_thread(remove_tree, _partition_dir(env, tenant))
    dsn = env.get("DATABASE_URL")
    if dsn:
        tally.add(await _sweep_rows(dsn, tenant, None, set()))
    return tally


def remove_tree(path: Path) -> Tally:
    """Delete a directory (or file) and say how many files and bytes went."""
    tally = Tally()
    if path.is_file():
        tally.count, tally.bytes = 1, path.stat().st_size
        path.unlink()
        return tally
    if not path.is_dir():
        return tally
    for item in path.rglob("*"):
        if item.is_file():
            tally.count += 1
            tally.bytes += item.stat().st_size
    shutil.rmtree(path)
    return tally

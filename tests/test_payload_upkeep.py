"""Deleting from the payload store (common/payload_upkeep.py), on files and on the session's real
PostgreSQL: a sweep takes a tenant's old payloads except those named to keep, a payload stored again is
young again, an erasure takes a whole partition, and neither touches another tenant's.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import StorageDriver, StorageDriverClaim, StorageDriverRetrieveContext

from common.payload_store import UNRESOLVED_ENCODING, FileDriver, PostgresDriver
from common.payload_upkeep import erase_partition, referenced, sweep_partition
from tests.test_payload_partitions import stored_for


@pytest.fixture(params=["files", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[StorageDriver, dict[str, str]]]:
    env = {"CAIRN_HOME": str(tmp_path), "CAIRN_PAYLOAD_DIR": str(tmp_path / "payloads")}
    if request.param == "files":
        yield FileDriver(tmp_path / "payloads"), env
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        yield PostgresDriver(dsn), {**env, "DATABASE_URL": dsn}


def payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


async def present(driver: StorageDriver, claims: list[StorageDriverClaim]) -> list[bool]:
    found = await driver.retrieve(StorageDriverRetrieveContext(), claims)
    return [p.metadata.get("encoding") != UNRESOLVED_ENCODING for p in found]


async def test_a_sweep_keeps_what_is_named_and_what_is_young(
    store: tuple[StorageDriver, dict[str, str]],
) -> None:
    driver, env = store
    tenant, other = f"t{uuid.uuid4().hex[:8]}", f"o{uuid.uuid4().hex[:8]}"
    old_kept, old_gone, again = (payload(f"{name} {uuid.uuid4().hex}") for name in ("kept", "gone", "again"))
    claims = await driver.store(stored_for(f"{tenant}.research-1"), [old_kept, old_gone, again])
    (theirs,) = await driver.store(stored_for(f"{other}.research-1"), [old_gone])
    if isinstance(driver, FileDriver):  # Age the files rather than wait.
        for claim in (*claims, theirs):
            data = claim.claim_data
            path = Path(env["CAIRN_PAYLOAD_DIR"], "tenants", data["tenant"], data["key"][:2], data["key"])
            os.utime(path, (time.time() - 3600, time.time() - 3600))
        cutoff = datetime.fromtimestamp(time.time() - 60, UTC)
    else:
        await asyncio.sleep(1.0)
        cutoff = datetime.now(UTC)
        await asyncio.sleep(0.1)
    (stored_again,) = await driver.store(stored_for(f"{tenant}.research-2"), [again])  # young again
    assert stored_again.claim_data == claims[2].claim_data

    swept = await sweep_partition(env, tenant, cutoff, keep={claims[0].claim_data["key"]})
    assert swept.count == 1 and swept.bytes > 0
    assert await present(driver, claims) == [True, False, True]
    assert await present(driver, [theirs]) == [True]  # Another tenant's, the same bytes: untouched.
    assert (await sweep_partition(env, tenant, cutoff, keep=set())).count == 1  # Now the kept one goes too.

    erased = await erase_partition(env, other)
    assert erased.count == 1 and erased.bytes > 0 and await present(driver, [theirs]) == [False]
    with pytest.raises(ValueError, match="default tenant"):
        await erase_partition(env, "default")


def test_references_are_found_in_nested_payloads() -> None:
    """A reference as the SDK writes it into history, found wherever in an event it sits."""
    from temporalio.api.history.v1 import HistoryEvent
    from temporalio.api.sdk.v1.external_storage_pb2 import ExternalStorageReference

    from common.payload_store import external_storage

    env = {"CAIRN_HOME": "/nonexistent"}
    claim = {"key": "a" * 64, "tenant": "acme"}
    reference = external_storage(env)._claim_converter.to_payload(
        ExternalStorageReference(driver_name="cairn-files", claim_data=claim)
    )
    assert reference is not None
    event = HistoryEvent()
    attributes = event.activity_task_scheduled_event_attributes
    attributes.input.payloads.append(payload("inline"))
    attributes.input.payloads.append(reference)
    attributes.header.fields["x"].CopyFrom(reference)
    assert referenced([event], env) == {("acme", "a" * 64)}
    assert referenced([HistoryEvent()], env) == set()

"""Large payloads are kept per tenant: each run stores into its tenant's partition, a reference names
its partition, and a process reading for one tenant (the API, per request) cannot resolve another's.

The drivers run for real: files in a temp dir, and the session's real PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    StorageDriver,
    StorageDriverActivityInfo,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
    StorageDriverWorkflowInfo,
)

from common.payload_store import UNRESOLVED_ENCODING, FileDriver, PostgresDriver, reading_as
from common.tenancy import check_run_id, tenant_of_run_id


@pytest.fixture(params=["files", "postgres"])
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageDriver]:
    if request.param == "files":
        yield FileDriver(tmp_path / "payloads")
    else:
        yield PostgresDriver(request.getfixturevalue("postgres_dsn"))


def stored_for(workflow_id: str | None) -> StorageDriverStoreContext:
    if workflow_id is None:
        return StorageDriverStoreContext(target=StorageDriverActivityInfo(namespace="default", id="7"))
    return StorageDriverStoreContext(target=StorageDriverWorkflowInfo(namespace="default", id=workflow_id))


async def resolve(driver: StorageDriver, claim: StorageDriverClaim, tenant: str | None) -> Payload:
    token = reading_as.set(tenant)
    try:
        (payload,) = await driver.retrieve(StorageDriverRetrieveContext(), [claim])
    finally:
        reading_as.reset(token)
    return payload


def refused(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == UNRESOLVED_ENCODING


async def test_each_tenant_reads_only_its_own_partition(driver: StorageDriver, tmp_path: Path) -> None:
    data = Payload(metadata={"encoding": b"json/plain"}, data=f'"{uuid.uuid4().hex}"'.encode())
    (acme,) = await driver.store(stored_for("acme.research-1/s2"), [data])
    (default,) = await driver.store(stored_for("research-9"), [data])
    (heartbeat,) = await driver.store(stored_for(None), [data])
    assert acme.claim_data["tenant"] == "acme" and "tenant" not in default.claim_data
    assert "tenant" not in heartbeat.claim_data
    assert acme.claim_data["key"] == default.claim_data["key"]  # the same bytes, two partitions
    if isinstance(driver, FileDriver):
        key = acme.claim_data["key"]
        assert (tmp_path / "payloads" / "tenants" / "acme" / key[:2] / key).is_file()
        assert (tmp_path / "payloads" / key[:2] / key).is_file()
    assert await resolve(driver, acme, "acme") == data
    assert await resolve(driver, acme, None) == data  # a worker reads everything
    assert refused(await resolve(driver, acme, "globex"))
    assert refused(await resolve(driver, acme, "default"))
    assert await resolve(driver, default, "default") == data
    assert refused(await resolve(driver, default, "acme"))
    # A claim naming a partition that is no tenant id (a path, say) is nobody's.
    forged = StorageDriverClaim(claim_data={"key": acme.claim_data["key"], "tenant": "../acme"})
    assert refused(await resolve(driver, forged, None))


def test_a_run_id_names_its_tenant_before_the_first_dot() -> None:
    assert tenant_of_run_id("acme.research-1") == "acme"
    assert tenant_of_run_id("acme.research-1/s3") == "acme"
    assert tenant_of_run_id("research-1") == "default"
    assert tenant_of_run_id("Not A Tenant.x") == "default"
    check_run_id("acme.x", "acme")
    check_run_id("no-dot", "acme")
    with pytest.raises(ValueError, match="follows the run's tenant"):
        check_run_id("acme.x", "default")
    with pytest.raises(ValueError, match=r"'default\.glaciers\.v2'"):
        check_run_id("glaciers.v2", "default")

"""Erasing a tenant: `cairn tenant purge TENANT --yes` and `DELETE /v1/tenant` (an admin's own tenant).

Everything of the tenant goes, in an order that leaves nothing behind to write more: its schedules
first (they would start runs), then its runs (terminated, not cancelled: a cancelled run writes a
partial report and joins the library on its way out, and an erasure keeps nothing), then every workflow
execution of the tenant, history and visibility (`DeleteWorkflowExecution`: the run and its steps'
child workflows, every run of a continued-as-new chain), then its documents, library and run archives
in the corpus, its large payloads, reports and artifacts on disk, and last its API keys, browser
sessions and usage ledger. The answer says what went, counted.

The default tenant is refused: its files and payloads predate tenants and sit at the roots the others'
directories hang from. Must never: reach anything not of the named tenant (every workflow and
schedule query names it, every directory is its own `tenants/<tenant>`), or report success while
visibility still lists one of its executions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pydantic import BaseModel
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.corpus import Corpus
from client.api import CairnError
from client.server.db import Database
from common.config import cairn_home
from common.names import SEARCH_ATTR_TENANT
from common.payload_upkeep import Tally, erase_partition, remove_tree
from common.tenancy import DEFAULT_TENANT, corpus_scope, library_scope, tenant_directory, valid_tenant

VISIBILITY_SECONDS = 180.0


class Erased(BaseModel):
    """What a purge deleted."""

    tenant: str
    schedules: int = 0
    runs_terminated: int = 0
    executions_deleted: int = 0
    corpus_scopes: int = 0  # documents, library and run archives
    payloads: int = 0
    payload_bytes: int = 0
    files: int = 0  # reports and artifacts
    file_bytes: int = 0
    keys: int = 0
    sessions: int = 0
    usage_rows: int = 0


def executions_query(tenant: str) -> str:
    """Every workflow execution of `tenant`: its runs (by CairnTenant) and anything whose id names it
    (steps' child workflows, `<run>/<step>`). Safe to splice: a tenant id is letters, digits, hyphens."""
    valid_tenant(tenant)
    return f"{SEARCH_ATTR_TENANT} = '{tenant}' OR WorkflowId STARTS_WITH '{tenant}.'"


async def _executions(temporal: Client, tenant: str) -> list[tuple[str, str, bool]]:
    return [
        (w.id, w.run_id, w.status == WorkflowExecutionStatus.RUNNING)
        async for w in temporal.list_workflows(executions_query(tenant))
    ]


async def purge_tenant(
    tenant: str, *, temporal: Client, corpus: Corpus, env: Mapping[str, str], db: Database
) -> Erased:
    valid_tenant(tenant)
    if tenant == DEFAULT_TENANT:
        raise CairnError(
            "the default tenant cannot be purged: its data is not kept apart from the others'", "invalid"
        )
    erased = Erased(tenant=tenant)

    async for entry in await temporal.list_schedules(f"{SEARCH_ATTR_TENANT} = '{tenant}'"):
        if entry.id.startswith(f"{tenant}."):
            await temporal.get_schedule_handle(entry.id).delete()
            erased.schedules += 1

    executions = await _executions(temporal, tenant)
    for workflow_id, _, running in executions:
        if running:
            try:
                await temporal.get_workflow_handle(workflow_id).terminate("the tenant is being purged")
                erased.runs_terminated += 1
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:  # Ended meanwhile: nothing to stop.
                    raise
    deadline = asyncio.get_running_loop().time() + VISIBILITY_SECONDS
    deleted: set[tuple[str, str]] = set()
    while executions:
        for workflow_id, run_id, _ in executions:
            if (workflow_id, run_id) in deleted:
                continue  # Asked once; the server removes it from visibility in its own time.
            try:
                await temporal.workflow_service.delete_workflow_execution(
                    DeleteWorkflowExecutionRequest(
                        namespace=temporal.namespace,
                        workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                    )
                )
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
            deleted.add((workflow_id, run_id))
        # Deletion and visibility are asynchronous (tens of seconds on the dev server): look again
        # until nothing of the tenant is listed.
        await asyncio.sleep(1.0)
        executions = await _executions(temporal, tenant)
        if executions and asyncio.get_running_loop().time() > deadline:
            raise CairnError(
                f"{len(executions)} workflow executions of tenant {tenant} are still listed after "
                f"{VISIBILITY_SECONDS:g} s; run the purge again",
                "unavailable",
            )
    erased.executions_deleted = len(deleted)

    scopes = {corpus_scope(tenant), library_scope(tenant), *await corpus.scopes(f"run:{tenant}.")}
    for scope in sorted(scopes):
        await corpus.drop_scope(scope)
    erased.corpus_scopes = len(scopes)

    payloads = await erase_partition(env, tenant)
    erased.payloads, erased.payload_bytes = payloads.count, payloads.bytes
    files = Tally()
    from activities.sandbox.config import SandboxConfig

    home = cairn_home(env)
    artifacts = SandboxConfig.from_env(env).artifacts_dir or home / "artifacts"
    for root in (home / "reports", artifacts):
        files.add(await asyncio.to_thread(remove_tree, root / tenant_directory(tenant)))
    erased.files, erased.file_bytes = files.count, files.bytes

    from client.server import keys, quotas, sessions

    await db.ensure_schema("cairn_api_keys", keys.SCHEMA)
    await db.ensure_schema("cairn_web_sessions", sessions.SCHEMA)
    await db.ensure_schema("cairn_usage", quotas.SCHEMA)
    erased.sessions = await db.execute("DELETE FROM cairn_web_sessions WHERE tenant = ?", (tenant,))
    erased.usage_rows = await db.execute("DELETE FROM cairn_usage WHERE tenant = ?", (tenant,))
    erased.keys = await db.execute("DELETE FROM cairn_api_keys WHERE tenant = ?", (tenant,))
    return erased

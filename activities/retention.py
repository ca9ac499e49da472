"""The `retention.sweep` activity: what closed runs past their tenant's retention leave behind is deleted,
and nothing an open run still needs.

Per tenant (its `retention_days` in CAIRN_TENANTS_FILE, 30 by default), for every research run closed
before the cutoff: its archive of fetched pages (corpus scope `run:<id>`), its report file and its
artifacts. Then the tenant's payloads stored before the cutoff, except every payload referenced by the
history of one of the tenant's open workflows (running, or paused waiting for approval or a budget):
payloads are content-addressed and shared, so age alone never decides. A payload stored again by a run
is touched (common/payload_store.py), so one in use is young again. The tenant's documents and library
are kept: they are the tenant's long-term memory, not a run's leftovers. Temporal itself deletes closed
runs' histories after the namespace's retention (`cairn dev` sets it to match; docs/operations.md).

The answer counts what was deleted, and its bytes, per tenant. Deleting is idempotent, so a sweep
retried after a dead worker only finishes the work. Must never: delete anything of a run that is still
open, or of a tenant other than the one being swept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio import activity
from temporalio.client import Client

from activities.corpus import Corpus
from activities.reports import report_file_name
from activities.sandbox.artifacts import run_directory
from common.names import RESEARCH_WORKFLOW, RETENTION_SWEEP, SEARCH_ATTR_TENANT
from common.payload_upkeep import payload_root, referenced, remove_tree, sweep_partition
from common.retention_models import SweepRequest, SweepResult, TenantSwept
from common.tenancy import DEFAULT_TENANT, TENANT_PATTERN, tenant_directory, valid_tenant

DEFAULT_RETENTION_DAYS = 30.0


def _tenant_clause(tenant: str) -> str:
    if tenant == DEFAULT_TENANT:
        return f"({SEARCH_ATTR_TENANT} = '{DEFAULT_TENANT}' OR {SEARCH_ATTR_TENANT} IS NULL)"
    return f"{SEARCH_ATTR_TENANT} = '{valid_tenant(tenant)}'"


def _open_query(tenant: str) -> str:
    """Every open workflow that may hold references into `tenant`'s payloads: its runs and their steps
    (whose ids name the tenant), or for the default tenant every open workflow not of another."""
    if tenant == DEFAULT_TENANT:
        return "ExecutionStatus = 'Running'"  # Its runs' ids name no tenant: keep what any open run holds.
    return f"ExecutionStatus = 'Running' AND ({_tenant_clause(tenant)} OR WorkflowId STARTS_WITH '{tenant}.')"


class RetentionActivities:
    def __init__(
        self,
        corpus: Corpus,
        home: Path,
        artifacts: Path,
        env: Mapping[str, str],
        retention_days: Callable[[str], float],
        known_tenants: Callable[[], list[str]] = list,
    ) -> None:
        self._corpus = corpus
        self._home = home
        self._artifacts = artifacts
        self._env = env
        self._retention_days = retention_days
        self._known = known_tenants

    def tenants(self) -> list[str]:
        """The default tenant, those the tenants file names, and any with files of their own."""
        found = {DEFAULT_TENANT, *self._known()}
        for root in (self._home / "reports", self._artifacts, payload_root(self._env)):
            directory = root / "tenants"
            if directory.is_dir():
                found.update(p.name for p in directory.iterdir() if TENANT_PATTERN.match(p.name))
        return sorted(found)

    @activity.defn(name=RETENTION_SWEEP)
    async def sweep(self, request: SweepRequest) -> SweepResult:
        client = activity.client()
        result = SweepResult()
        for tenant in request.tenants or self.tenants():
            result.tenants.append(await self._sweep(client, valid_tenant(tenant)))
        return result

    async def _sweep(self, client: Client, tenant: str) -> TenantSwept:
        days = self._retention_days(tenant)
        cutoff = datetime.now(UTC) - timedelta(days=days)
        swept = TenantSwept(tenant=tenant, retention_days=days)
        closed = (
            f"WorkflowType = '{RESEARCH_WORKFLOW}' AND ExecutionStatus != 'Running' AND "
            f"CloseTime < '{cutoff.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}' AND {_tenant_clause(tenant)}"
        )
        async for execution in client.list_workflows(closed):
            activity.heartbeat(execution.id)
            swept.runs += 1
            archive = f"run:{execution.id}"
            if await self._corpus.documents(archive):
                await self._corpus.drop_scope(archive)
                swept.archives += 1
            report = self._home / "reports" / tenant_directory(tenant) / report_file_name(execution.id)
            gone = await asyncio.to_thread(remove_tree, report)
            swept.reports += gone.count
            swept.report_bytes += gone.bytes
            try:
                files = await asyncio.to_thread(
                    remove_tree, run_directory(self._artifacts, tenant, execution.id)
                )
            except ValueError:
                continue  # An id that names no directory of ours had no artifacts.
            swept.artifacts += files.count
            swept.artifact_bytes += files.bytes
        # What open runs still reference is read last, just before deleting, so a run that started
        # during the sweep is seen.
        keep: set[str] = set()
        async for execution in client.list_workflows(_open_query(tenant)):
            activity.heartbeat(execution.id)
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            keep.update(key for owner, key in referenced(history.events, self._env) if owner == tenant)
        payloads = await sweep_partition(self._env, tenant, cutoff, keep)
        swept.payloads, swept.payload_bytes = payloads.count, payloads.bytes
        swept.kept_payloads = len(keep)
        return swept

"""Whose a run is, checked before any read or write of it reaches the workflow.

The truth is the run's CairnTenant search attribute, set when it starts (a run without it is the default
tenant's, as runs from before tenants are). Every route that names a run asks `RunIndex.check` first;
another tenant's run, a step's child workflow, a workflow of another type and an id that does not exist
all get the same 404. List queries are built here from the caller's tenant, which is a validated tenant
id (common/tenancy.py), never from text a caller sent.

A run's tenant never changes, so a positive answer is remembered for a short while: status reads then
cost one query, not a describe and a query. Must never: remember a negative answer (a run may start a
moment later), or splice a caller's text into a visibility query.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import get_args

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError, RPCStatusCode

from client.api import CairnError, validated_workflow_id
from client.server.problems import Problem, not_found
from common.models import Phase
from common.names import RESEARCH_WORKFLOW, SEARCH_ATTR_PHASE, SEARCH_ATTR_TENANT
from common.tenancy import DEFAULT_TENANT, valid_tenant

TENANT_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTR_TENANT)
REMEMBER_SECONDS = 30.0
REMEMBER_RUNS = 10_000


def tenant_clause(tenant: str) -> str:
    """The visibility clause selecting `tenant`'s runs. Safe to splice: a tenant id is letters, digits
    and hyphens (valid_tenant), checked again here."""
    valid_tenant(tenant)
    if tenant == DEFAULT_TENANT:
        return f"({SEARCH_ATTR_TENANT} = '{DEFAULT_TENANT}' OR {SEARCH_ATTR_TENANT} IS NULL)"
    return f"{SEARCH_ATTR_TENANT} = '{tenant}'"


def runs_query(tenant: str, phase: Phase | None = None, running_only: bool = False) -> str:
    """Every clause from server-side values: the workflow type, the tenant, a phase of the fixed set."""
    clauses = [f"WorkflowType = '{RESEARCH_WORKFLOW}'", tenant_clause(tenant)]
    if phase is not None:
        if phase not in get_args(Phase):
            raise ValueError(f"unknown phase {phase!r}")
        clauses.append(f"{SEARCH_ATTR_PHASE} = '{phase}'")
    if running_only:
        clauses.append("ExecutionStatus = 'Running'")
    return " AND ".join(clauses)


class RunIndex:
    def __init__(self, temporal: Client) -> None:
        self._temporal = temporal
        self._known: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def remember(self, run_id: str, tenant: str) -> None:
        self._known[run_id] = (tenant, time.monotonic())
        self._known.move_to_end(run_id)
        while len(self._known) > REMEMBER_RUNS:
            self._known.popitem(last=False)

    async def tenant_of(self, run_id: str) -> str | None:
        """The run's tenant, or None when no research run has this id."""
        known = self._known.get(run_id)
        if known is not None and time.monotonic() - known[1] < REMEMBER_SECONDS:
            return known[0]
        try:
            validated_workflow_id(run_id)
        except CairnError:
            return None
        try:
            described = await self._temporal.get_workflow_handle(run_id).describe()
        except RPCError as err:
            if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return None
            raise Problem(503, "Temporal did not answer; try again shortly", code="unavailable") from None
        if described.workflow_type != RESEARCH_WORKFLOW:
            return None
        tenant = described.typed_search_attributes.get(TENANT_KEY) or DEFAULT_TENANT
        self.remember(run_id, tenant)
        return tenant

    async def check(self, tenant: str, run_id: str) -> None:
        """Refuse with 404 unless `run_id` is a research run of `tenant`."""
        if await self.tenant_of(run_id) != tenant:
            raise not_found(run_id)

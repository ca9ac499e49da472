"""The `runs.predecessor` activity: the earlier run a follow-up or a scheduled run builds on.

A follow-up names its predecessor; a scheduled run's is the most recently completed run its schedule
started (the schedule's own list of its recent runs, then visibility, where Temporal records the
schedule in each run's `TemporalScheduledById`). The predecessor's
findings come from its result (`ResearchResult.findings`; a run from before they were kept gives its
sources alone). The activity uses the worker's own Temporal client, so it holds no credentials.

Must never: hand one tenant's run to another's (the predecessor's CairnTenant must be the asking run's
tenant, else a non-retryable InvalidInput, as for a run that does not exist), or splice into a
visibility query anything but a schedule id of the fixed shape (common/tenancy.py).
"""

from __future__ import annotations

from datetime import datetime

from temporalio import activity
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from common import errors
from common.models import Finding, PredecessorRequest, PriorRun, ResearchResult
from common.names import RESEARCH_WORKFLOW, RUNS_PREDECESSOR, SEARCH_ATTR_TENANT
from common.tenancy import DEFAULT_TENANT, is_schedule_id

TENANT_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTR_TENANT)


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=errors.INVALID_INPUT, non_retryable=True)


async def last_completed_run(client: Client, schedule_id: str, exclude: str) -> str | None:
    """The id of the schedule's most recently closed completed run other than `exclude`.

    First from the schedule's own record of the runs it started (its last ten, kept by Temporal with
    the schedule, so a run that closed a moment ago is there), then from visibility, which lags the
    close by a moment but reaches runs older than those ten."""
    if not is_schedule_id(schedule_id):
        raise _refused(f"{schedule_id[:80]!r} is not a schedule id")
    latest: tuple[float, str] | None = None

    def consider(run_id: str, status: WorkflowExecutionStatus | None, closed: datetime | None) -> None:
        nonlocal latest
        if run_id == exclude or status != WorkflowExecutionStatus.COMPLETED or closed is None:
            return
        if latest is None or closed.timestamp() > latest[0]:
            latest = (closed.timestamp(), run_id)

    try:
        described = await client.get_schedule_handle(schedule_id).describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:  # A deleted schedule's runs are still in visibility.
            raise
    else:
        for recent in described.info.recent_actions:
            action = recent.action
            if not isinstance(action, ScheduleActionExecutionStartWorkflow) or action.workflow_id == exclude:
                continue
            try:
                run = await client.get_workflow_handle(action.workflow_id).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:  # Gone past the namespace's retention.
                    continue
                raise
            consider(run.id, run.status, run.close_time)
    if latest is not None:
        return latest[1]
    query = (
        f"WorkflowType = '{RESEARCH_WORKFLOW}' AND TemporalScheduledById = '{schedule_id}' "
        "AND ExecutionStatus = 'Completed'"
    )
    async for execution in client.list_workflows(query):
        consider(execution.id, execution.status, execution.close_time)
    return latest[1] if latest else None


async def read_prior(client: Client, run_id: str, tenant: str) -> PriorRun:
    """Run `run_id`'s question, finishing time and findings, if it is a completed run of `tenant`."""
    handle = client.get_workflow_handle(run_id, result_type=ResearchResult)
    try:
        described = await handle.describe()
    except RPCError as err:
        if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise _refused(f"no run with id {run_id}") from None
        raise
    owner = described.typed_search_attributes.get(TENANT_KEY) or DEFAULT_TENANT
    if described.workflow_type != RESEARCH_WORKFLOW or owner != tenant:
        raise _refused(f"no run with id {run_id}")  # Another tenant's run is one that does not exist.
    if described.status != WorkflowExecutionStatus.COMPLETED or described.close_time is None:
        status = described.status.name.lower() if described.status else "unknown"
        raise _refused(f"run {run_id} has not completed ({status}); only a completed run can be built on")
    result: ResearchResult = await handle.result()
    findings = list(result.findings)
    if not findings and result.sources:  # A run from before findings were kept: its sources alone.
        findings = [Finding(step_id="earlier", title="Earlier sources", summary="", sources=result.sources)]
    return PriorRun(
        workflow_id=run_id,
        question=result.question,
        finished_at=described.close_time.isoformat(),
        findings=findings,
    )


class LivingActivities:
    @activity.defn(name=RUNS_PREDECESSOR)
    async def predecessor(self, request: PredecessorRequest) -> PriorRun | None:
        client = activity.client()
        if request.follows:
            return await read_prior(client, request.follows, request.tenant)
        if request.schedule_id:
            earlier = await last_completed_run(client, request.schedule_id, request.workflow_id)
            return None if earlier is None else await read_prior(client, earlier, request.tenant)
        return None

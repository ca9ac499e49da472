"""Cairn's Python API: start, steer and read research runs. The `cairn` CLI is built on this.

Input is validated here, before anything reaches Temporal, so a person sees a clear error instead of a
failed workflow. Signals carry the plan version they act on; when the caller gives none, the current
version is read first and the run must be awaiting approval.

Runs start with the CairnPhase and CairnOwner search attributes where the server has them registered
(checked once per client), and without them where it has not: an unregistered attribute must never
stop a run from starting.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from temporalio.api.enums.v1 import EventType, IndexedValueType, PendingActivityState, TaskQueueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from client.connection import connect
from common.config import TemporalConfig, owner
from common.models import (
    AbortRun,
    AddStep,
    ApprovePlan,
    BudgetStatus,
    EditPlan,
    Plan,
    RaiseBudget,
    RequestChanges,
    ResearchInput,
    ResearchResult,
    RunStatus,
    SkipStep,
    StepSpec,
)
from common.names import (
    QUERY_STATUS,
    RESEARCH_WORKFLOW,
    SEARCH_ATTR_OWNER,
    SEARCH_ATTR_PHASE,
    SIGNAL_ABORT,
    SIGNAL_ADD_STEP,
    SIGNAL_APPROVE_PLAN,
    SIGNAL_REQUEST_CHANGES,
    SIGNAL_SKIP_STEP,
    UPDATE_EDIT_PLAN,
    UPDATE_RAISE_BUDGET,
)
from workflows.calls import WORKFLOW_TASK_TIMEOUT

PHASE = SearchAttributeKey.for_keyword(SEARCH_ATTR_PHASE)
OWNER = SearchAttributeKey.for_keyword(SEARCH_ATTR_OWNER)


class CairnError(Exception):
    """A request Cairn refuses, with a message meant for a person."""


def _explain(err: ValidationError) -> str:
    parts = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def validated_input(question: str, **options: Any) -> ResearchInput:
    try:
        return ResearchInput(question=question, **options)
    except ValidationError as err:
        raise CairnError(f"invalid research request: {_explain(err)}") from None


def validated_steps(steps: Sequence[StepSpec | dict[str, Any]]) -> list[StepSpec]:
    try:
        return [s if isinstance(s, StepSpec) else StepSpec.model_validate(s) for s in steps]
    except ValidationError as err:
        raise CairnError(f"invalid plan edit: {_explain(err)}") from None


@dataclass(frozen=True)
class RunSummary:
    workflow_id: str
    run_id: str | None
    status: str
    start_time: datetime | None
    close_time: datetime | None


@dataclass(frozen=True)
class RunningActivity:
    """An activity in flight in a run or one of its step workflows, as `cairn watch` shows it."""

    workflow_id: str
    activity_type: str
    summary: str
    attempt: int
    started: bool


class CairnClient:
    def __init__(self, client: Client, task_queue: str, owner_name: str | None = None) -> None:
        self.temporal = client
        self.task_queue = task_queue
        self.owner = owner_name or owner()
        self._registered: set[str] | None = None

    @classmethod
    async def connect(cls, config: TemporalConfig | None = None) -> CairnClient:
        config = config or TemporalConfig.from_env()
        return cls(await connect(config), config.task_queue)

    def _handle(self, workflow_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(workflow_id, result_type=ResearchResult)

    async def registered_search_attributes(self) -> set[str]:
        """Which of Cairn's search attributes the server knows; asked once per client. A server that
        refuses to say (no permission for the operator API) counts as knowing none."""
        if self._registered is None:
            try:
                response = await self.temporal.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=self.temporal.namespace)
                )
                known = set(response.custom_attributes)
            except RPCError:
                known = set()
            self._registered = known & {SEARCH_ATTR_PHASE, SEARCH_ATTR_OWNER}
        return self._registered

    async def register_search_attributes(self) -> set[str]:
        """Add whichever of Cairn's search attributes the server lacks. For a server Cairn owns (the
        embedded one): its database may predate them, and the dev server's `--search-attribute`
        registers them only when it creates a database."""
        missing = {SEARCH_ATTR_PHASE, SEARCH_ATTR_OWNER} - await self.registered_search_attributes()
        if missing:
            keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
            await self.temporal.operator_service.add_search_attributes(
                AddSearchAttributesRequest(
                    namespace=self.temporal.namespace,
                    search_attributes=dict.fromkeys(sorted(missing), keyword),
                )
            )
            self._registered = None
        return await self.registered_search_attributes()

    async def start(self, question: str, *, workflow_id: str | None = None, **options: Any) -> str:
        request = validated_input(question, **options)
        workflow_id = workflow_id or f"research-{uuid.uuid4().hex[:12]}"
        registered = await self.registered_search_attributes()
        pairs = [
            SearchAttributePair(key, value)
            for key, value in ((PHASE, "planning"), (OWNER, self.owner))
            if key.name in registered
        ]
        await self.temporal.start_workflow(
            RESEARCH_WORKFLOW,
            request,
            id=workflow_id,
            task_queue=self.task_queue,
            search_attributes=TypedSearchAttributes(pairs) if pairs else None,
            # The Web UI's workflow list and page show this line: the question, not just an id.
            static_summary=request.question[:200],
            # A workflow task held by a worker that died is handed out again after 5 s, not 10.
            task_timeout=WORKFLOW_TASK_TIMEOUT,
        )
        return workflow_id

    async def status(self, workflow_id: str) -> RunStatus:
        try:
            return await self._handle(workflow_id).query(QUERY_STATUS, result_type=RunStatus)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CairnError(f"no run with id {workflow_id}") from None
            raise

    async def _awaiting(self, workflow_id: str, plan_version: int | None) -> int:
        if plan_version is not None:
            return plan_version
        status = await self.status(workflow_id)
        if status.phase != "awaiting_approval" or status.plan is None:
            raise CairnError(f"run {workflow_id} is {status.phase}, not awaiting approval")
        return status.plan.version

    async def approve(self, workflow_id: str, plan_version: int | None = None) -> int:
        version = await self._awaiting(workflow_id, plan_version)
        await self._handle(workflow_id).signal(SIGNAL_APPROVE_PLAN, ApprovePlan(plan_version=version))
        return version

    async def revise(self, workflow_id: str, feedback: str, plan_version: int | None = None) -> int:
        version = await self._awaiting(workflow_id, plan_version)
        try:
            signal = RequestChanges(plan_version=version, feedback=feedback)
        except ValidationError as err:
            raise CairnError(f"invalid change request: {_explain(err)}") from None
        await self._handle(workflow_id).signal(SIGNAL_REQUEST_CHANGES, signal)
        return version

    async def edit(
        self,
        workflow_id: str,
        steps: Sequence[StepSpec | dict[str, Any]],
        plan_version: int | None = None,
    ) -> Plan:
        edit = EditPlan(
            plan_version=await self._awaiting(workflow_id, plan_version),
            steps=validated_steps(steps),
        )
        try:
            return await self._handle(workflow_id).execute_update(UPDATE_EDIT_PLAN, edit, result_type=Plan)
        except WorkflowUpdateFailedError as err:
            raise CairnError(f"plan edit rejected: {err.cause}") from None

    async def skip_step(self, workflow_id: str, step_id: str) -> None:
        """A pending step will not run; a running one is cancelled (its activities are told)."""
        await self._handle(workflow_id).signal(SIGNAL_SKIP_STEP, SkipStep(step_id=step_id))

    async def add_step(
        self, workflow_id: str, title: str, kind: str = "research", description: str = ""
    ) -> None:
        """A new step joins the plan of a running run and is carried out with the others."""
        try:
            signal = AddStep.model_validate({"title": title, "kind": kind, "description": description})
        except ValidationError as err:
            raise CairnError(f"invalid step: {_explain(err)}") from None
        await self._handle(workflow_id).signal(SIGNAL_ADD_STEP, signal)

    async def raise_budget(
        self,
        workflow_id: str,
        *,
        token_budget: int | None = None,
        cost_budget_usd: float | None = None,
        deadline_seconds: float | None = None,
    ) -> BudgetStatus:
        """New limits (absolute); a paused run goes on once no limit is reached."""
        try:
            raised = RaiseBudget(
                token_budget=token_budget, cost_budget_usd=cost_budget_usd, deadline_seconds=deadline_seconds
            )
        except ValidationError as err:
            raise CairnError(f"invalid budget: {_explain(err)}") from None
        try:
            return await self._handle(workflow_id).execute_update(
                UPDATE_RAISE_BUDGET, raised, result_type=BudgetStatus
            )
        except WorkflowUpdateFailedError as err:
            raise CairnError(f"budget raise rejected: {err.cause}") from None

    async def abort(self, workflow_id: str, reason: str = "") -> None:
        await self._handle(workflow_id).signal(SIGNAL_ABORT, AbortRun(reason=reason))

    async def result(self, workflow_id: str) -> ResearchResult:
        try:
            return await self._handle(workflow_id).result()
        except WorkflowFailureError as err:
            raise CairnError(f"run {workflow_id} failed: {err.cause}") from None

    async def describe_status(self, workflow_id: str) -> WorkflowExecutionStatus | None:
        return (await self._handle(workflow_id).describe()).status

    async def running_activities(self, workflow_id: str) -> list[RunningActivity]:
        """The activities in flight now, in the run and in its running step workflows, each with the
        summary its workflow gave it (`plan v2`, `run code: step s3`)."""
        running: list[RunningActivity] = []
        pending_workflows = [workflow_id]
        while pending_workflows:
            wid = pending_workflows.pop(0)
            raw = (await self.temporal.get_workflow_handle(wid).describe()).raw_description
            pending_workflows += [c.workflow_id for c in raw.pending_children]
            if not raw.pending_activities:
                continue
            summaries = await self._activity_summaries(wid)
            for pending in raw.pending_activities:
                running.append(
                    RunningActivity(
                        workflow_id=wid,
                        activity_type=pending.activity_type.name,
                        summary=summaries.get(pending.activity_id, ""),
                        attempt=pending.attempt,
                        started=pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
                    )
                )
        return running

    async def _activity_summaries(self, workflow_id: str) -> dict[str, str]:
        """activity id -> summary, read from the workflow's scheduled-activity events (the summary is
        user metadata of the event; the describe call does not carry it)."""
        summaries: dict[str, str] = {}
        converter = self.temporal.data_converter  # Applies a codec, if the client has one.
        async for event in self.temporal.get_workflow_handle(workflow_id).fetch_history_events():
            if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                continue
            if not event.user_metadata.HasField("summary"):
                continue
            activity_id = event.activity_task_scheduled_event_attributes.activity_id
            summaries[activity_id] = str((await converter.decode([event.user_metadata.summary], [str]))[0])
        return summaries

    async def list(self, limit: int = 20) -> list[RunSummary]:
        runs = []
        async for execution in self.temporal.list_workflows(
            f"WorkflowType = '{RESEARCH_WORKFLOW}'", limit=limit
        ):
            runs.append(
                RunSummary(
                    workflow_id=execution.id,
                    run_id=execution.run_id,
                    status=execution.status.name if execution.status else "UNKNOWN",
                    start_time=execution.start_time,
                    close_time=execution.close_time,
                )
            )
        return runs

    async def has_pollers(self) -> bool:
        """Whether any worker polls this task queue now (a run with none would sit forever)."""
        response = await self.temporal.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=self.temporal.namespace,
                task_queue=TaskQueue(name=self.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        return len(response.pollers) > 0

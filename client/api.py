"""Cairn's Python API: start, steer and read research runs. The `cairn` CLI is built on this.

Input is validated here, before anything reaches Temporal, so a person sees a clear error instead of a
failed workflow. Signals carry the plan version they act on; when the caller gives none, the current
version is read first and the run must be awaiting approval.

Runs start with the CairnPhase, CairnOwner and CairnTenant search attributes where the server has them
registered (checked once per client), and without them where it has not: an unregistered attribute
must never stop a run from starting (`cairn serve` insists on CairnTenant: it checks tenants by it).

Every signal, update, query and describe of a run goes through `CairnClient._about`, which turns
Temporal's client errors into one CairnError line ("no run with id X", "run X has ended (completed)",
"run X did not answer its status query: ..."). Must never: show a person an RPC error's traceback,
or wait without bound for a worker that may not exist (queries and updates carry a timeout).
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.api.enums.v1 import EventType, IndexedValueType, PendingActivityState, TaskQueueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    Priority,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from client.listing import newest_first
from common.config import TemporalConfig, owner
from common.models import (
    SIGNALS,
    UPDATES,
    BudgetStatus,
    Clarification,
    Plan,
    ResearchInput,
    ResearchResult,
    RunStatus,
    StepSpec,
)
from common.names import (
    CAIRN_SEARCH_ATTRIBUTES,
    QUERY_STATUS,
    RESEARCH_WORKFLOW,
    SEARCH_ATTR_OWNER,
    SEARCH_ATTR_PHASE,
    SEARCH_ATTR_TENANT,
    SIGNAL_ABORT,
    SIGNAL_ADD_STEP,
    SIGNAL_APPROVE_PLAN,
    SIGNAL_REQUEST_CHANGES,
    SIGNAL_SKIP_STEP,
    UPDATE_ANSWER_CLARIFICATION,
    UPDATE_EDIT_PLAN,
    UPDATE_RAISE_BUDGET,
)
from common.plugin import connect
from common.tenancy import DEFAULT_TENANT, check_run_id
from workflows.calls import WORKFLOW_TASK_TIMEOUT
from workflows.inputs import explain

PHASE = SearchAttributeKey.for_keyword(SEARCH_ATTR_PHASE)
OWNER = SearchAttributeKey.for_keyword(SEARCH_ATTR_OWNER)
TENANT = SearchAttributeKey.for_keyword(SEARCH_ATTR_TENANT)
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# A query or update needs the run's worker. Without one (none polls the task queue, or it is stuck) the
# call would wait forever; a person's command must end with a message instead. A healthy worker
# answers in well under a second.
QUERY_TIMEOUT = timedelta(seconds=5)
UPDATE_TIMEOUT = timedelta(seconds=10)
# Step workflows are '<run id>/<step id>': a '/' in a run's own id would make those ambiguous.
MAX_WORKFLOW_ID = 200


ErrorKind = Literal["invalid", "not_found", "conflict", "unavailable", "refused"]


class CairnError(Exception):
    """A request Cairn refuses, with a message meant for a person. `kind` says what sort of refusal it
    is, so the HTTP API can answer with the matching status: bad input, no such run, a run in the wrong
    state for the request, a worker that did not answer, or anything else."""

    def __init__(self, message: str, kind: ErrorKind = "refused") -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


def validated_input(question: str, **options: Any) -> ResearchInput:
    try:
        return ResearchInput(question=question, **options)
    except ValidationError as err:
        raise CairnError(f"invalid research request: {explain(err)}", "invalid") from None


def _request(model: type[M], what: str, **fields: Any) -> M:
    """The signal or update argument `model` built from `fields`, or a CairnError saying what is wrong."""
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        raise CairnError(f"invalid {what}: {explain(err)}", "invalid") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def validated_workflow_id(workflow_id: str) -> str:
    """A run id a person chose, refused at the door unless it is at most MAX_WORKFLOW_ID characters
    with no whitespace, no control or format characters, and no '/'."""
    bad = next((c for c in workflow_id if c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs")), None)
    if not workflow_id:
        problem = "it is empty"
    elif len(workflow_id) > MAX_WORKFLOW_ID:
        problem = f"it has {len(workflow_id):,} characters, more than {MAX_WORKFLOW_ID}"
    elif "/" in workflow_id:
        problem = "'/' is kept for its steps' workflows ('<id>/<step>')"
    elif bad is not None:
        problem = f"it holds {bad!r}; whitespace and control characters are not allowed"
    else:
        return workflow_id
    raise CairnError(f"invalid run id: {problem}", "invalid")


def validated_steps(steps: Sequence[StepSpec | dict[str, Any]]) -> list[StepSpec]:
    try:
        return [s if isinstance(s, StepSpec) else StepSpec.model_validate(s) for s in steps]
    except ValidationError as err:
        raise CairnError(f"invalid plan edit: {explain(err)}", "invalid") from None


@dataclass(frozen=True)
class StartedRun:
    workflow_id: str
    created: bool  # False: a run with this id already existed, and nothing was started


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
        # A client reads large payloads from the store but never writes there: its signals stay inline,
        # so a worker that cannot see this process's store can still read them.
        return cls(await connect(config, offload=False), config.task_queue)

    def _handle(self, workflow_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(workflow_id, result_type=ResearchResult)

    @asynccontextmanager
    async def _about(self, workflow_id: str, asking: str = "") -> AsyncIterator[None]:
        """Temporal's client errors about run `workflow_id` as one CairnError line for a person.
        `asking` names a call its worker must answer ("its status query"), so silence is named too."""
        if not workflow_id:
            raise CairnError("no run id given", "invalid")
        try:
            yield
        except WorkflowQueryFailedError as err:
            raise CairnError(
                f"run {workflow_id} did not answer {asking}: {_one_line(err.message)}", "unavailable"
            ) from None
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise CairnError(self._silent(workflow_id, asking, UPDATE_TIMEOUT), "unavailable") from None
        except RPCError as err:
            raise await self._explained(workflow_id, err, asking) from None

    async def _explained(self, workflow_id: str, err: RPCError, asking: str) -> CairnError:
        if err.status == RPCStatusCode.NOT_FOUND:
            # "Not found" is said both of an unknown id and of a run that has closed: describe tells.
            try:
                state = (await self._handle(workflow_id).describe()).status
            except RPCError as again:
                if again.status == RPCStatusCode.NOT_FOUND:
                    return CairnError(f"no run with id {workflow_id}", "not_found")
                state = None
            if state is not None and state != WorkflowExecutionStatus.RUNNING:
                return CairnError(
                    f"run {workflow_id} has ended ({state.name.lower().replace('_', ' ')})", "conflict"
                )
        if asking and err.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
            return CairnError(self._silent(workflow_id, asking, QUERY_TIMEOUT), "unavailable")
        if asking and err.status != RPCStatusCode.INVALID_ARGUMENT:
            return CairnError(
                f"run {workflow_id} did not answer {asking}: {_one_line(err.message)}", "unavailable"
            )
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            return CairnError(_one_line(err.message), "invalid")
        if err.status == RPCStatusCode.UNAVAILABLE:
            return CairnError(_one_line(err.message), "unavailable")
        return CairnError(_one_line(err.message))

    async def _signal(self, workflow_id: str, name: str, what: str, **fields: Any) -> None:
        """Send signal `name` with what the protocol table says it carries, built from `fields`."""
        arg = _request(SIGNALS[name], what, **fields)
        async with self._about(workflow_id):
            await self._handle(workflow_id).signal(name, arg)

    async def _update(self, workflow_id: str, name: str, what: str, **fields: Any) -> Any:
        """Run update `name`; a rejection by the run's validator is a CairnError naming `what`."""
        carries, answers = UPDATES[name]
        arg = _request(carries, what, **fields)
        async with self._about(workflow_id, f"the {what}"):
            try:
                return await self._handle(workflow_id).execute_update(
                    name, arg, result_type=answers, rpc_timeout=UPDATE_TIMEOUT
                )
            except WorkflowUpdateFailedError as err:
                raise CairnError(f"{what} rejected: {err.cause}", "conflict") from None

    @staticmethod
    def _silent(workflow_id: str, asking: str, timeout: timedelta) -> str:
        return (
            f"run {workflow_id} did not answer {asking} within {timeout.total_seconds():g} s: "
            "no worker polls its task queue, or its worker is stuck"
        )

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
            self._registered = known & set(CAIRN_SEARCH_ATTRIBUTES)
        return self._registered

    async def register_search_attributes(self) -> set[str]:
        """Add whichever of Cairn's search attributes the server lacks. For a server Cairn owns (the
        embedded one): its database may predate them, and the dev server's `--search-attribute`
        registers them only when it creates a database."""
        missing = set(CAIRN_SEARCH_ATTRIBUTES) - await self.registered_search_attributes()
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

    async def start(
        self,
        question: str,
        *,
        workflow_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
        fairness_weight: float | None = None,
        **options: Any,
    ) -> str:
        request = validated_input(question, tenant=tenant, **options)
        if workflow_id is None:
            workflow_id = f"research-{uuid.uuid4().hex[:12]}"
        validated_workflow_id(workflow_id)
        try:
            check_run_id(workflow_id, tenant)
        except ValueError as err:
            raise CairnError(f"invalid run id: {err}", "invalid") from None
        started = await self.start_run(request, workflow_id, fairness_weight=fairness_weight)
        if not started.created:
            raise CairnError(f"a run with id {workflow_id} already exists", "conflict")
        return workflow_id

    async def start_run(
        self,
        request: ResearchInput,
        workflow_id: str,
        *,
        fairness_weight: float | None = None,
        memo: dict[str, Any] | None = None,
        once: bool = False,
    ) -> StartedRun:
        """Start `request` as run `workflow_id`; an id already taken answers `created=False`. With
        `once`, the id can never be used again, even after its run has closed (idempotent starts)."""
        registered = await self.registered_search_attributes()
        pairs = [
            SearchAttributePair(key, value)
            for key, value in (
                (PHASE, "planning"),
                (OWNER, self.owner),
                (TENANT, request.tenant),
            )
            if key.name in registered
        ]
        try:
            await self.temporal.start_workflow(
                RESEARCH_WORKFLOW,
                request,
                id=workflow_id,
                task_queue=self.task_queue,
                search_attributes=TypedSearchAttributes(pairs) if pairs else None,
                # The Web UI's workflow list and page show this line: the question, not just an id.
                static_summary=request.question[:200],
                memo=memo,
                # A workflow task held by a worker that died is handed out again after 5 s, not 10.
                task_timeout=WORKFLOW_TASK_TIMEOUT,
                # Each tenant's tasks are dispatched in proportion to its weight, on every queue its
                # run's workflows and activities use (they inherit this), so a tenant's backlog never
                # starves another's runs. Servers without fairness ignore it.
                priority=Priority(fairness_key=request.tenant, fairness_weight=fairness_weight),
                id_reuse_policy=(
                    WorkflowIDReusePolicy.REJECT_DUPLICATE if once else WorkflowIDReusePolicy.ALLOW_DUPLICATE
                ),
            )
        except WorkflowAlreadyStartedError:
            return StartedRun(workflow_id, created=False)
        except RPCError as err:
            raise CairnError(
                f"cannot start run {workflow_id}: {_one_line(err.message)}",
                "unavailable" if err.status == RPCStatusCode.UNAVAILABLE else "refused",
            ) from None
        return StartedRun(workflow_id, created=True)

    async def status(self, workflow_id: str) -> RunStatus:
        async with self._about(workflow_id, "its status query"):
            return await self._handle(workflow_id).query(
                QUERY_STATUS, result_type=RunStatus, rpc_timeout=QUERY_TIMEOUT
            )

    async def _awaiting(self, workflow_id: str, plan_version: int | None) -> int:
        if plan_version is not None:
            return plan_version
        status = await self.status(workflow_id)
        if status.phase != "awaiting_approval" or status.plan is None:
            raise CairnError(f"run {workflow_id} is {status.phase}, not awaiting approval", "conflict")
        return status.plan.version

    async def approve(self, workflow_id: str, plan_version: int | None = None) -> int:
        version = await self._awaiting(workflow_id, plan_version)
        await self._signal(workflow_id, SIGNAL_APPROVE_PLAN, "approval", plan_version=version)
        return version

    async def revise(self, workflow_id: str, feedback: str, plan_version: int | None = None) -> int:
        version = await self._awaiting(workflow_id, plan_version)
        await self._signal(
            workflow_id, SIGNAL_REQUEST_CHANGES, "change request", plan_version=version, feedback=feedback
        )
        return version

    async def edit(
        self,
        workflow_id: str,
        steps: Sequence[StepSpec | dict[str, Any]],
        plan_version: int | None = None,
    ) -> Plan:
        version = await self._awaiting(workflow_id, plan_version)
        plan: Plan = await self._update(
            workflow_id, UPDATE_EDIT_PLAN, "plan edit", plan_version=version, steps=validated_steps(steps)
        )
        return plan

    async def skip_step(self, workflow_id: str, step_id: str) -> None:
        """A pending step will not run; a running one is cancelled (its activities are told)."""
        await self._signal(workflow_id, SIGNAL_SKIP_STEP, "skip", step_id=step_id)

    async def add_step(
        self, workflow_id: str, title: str, kind: str = "research", description: str = ""
    ) -> None:
        """A new step joins the plan of a running run and is carried out with the others."""
        await self._signal(
            workflow_id, SIGNAL_ADD_STEP, "step", title=title, kind=kind, description=description
        )

    async def raise_budget(
        self,
        workflow_id: str,
        *,
        token_budget: int | None = None,
        cost_budget_usd: float | None = None,
        deadline_seconds: float | None = None,
    ) -> BudgetStatus:
        """New limits (absolute); a paused run goes on once no limit is reached."""
        budget: BudgetStatus = await self._update(
            workflow_id,
            UPDATE_RAISE_BUDGET,
            "budget raise",
            token_budget=token_budget,
            cost_budget_usd=cost_budget_usd,
            deadline_seconds=deadline_seconds,
        )
        return budget

    async def answer(self, workflow_id: str, answer: str) -> Clarification:
        """The person's answer to the planner's clarifying questions; the run then plans."""
        clarification: Clarification = await self._update(
            workflow_id, UPDATE_ANSWER_CLARIFICATION, "answer", answer=answer
        )
        return clarification

    async def abort(self, workflow_id: str, reason: str = "") -> None:
        await self._signal(workflow_id, SIGNAL_ABORT, "abort", reason=reason)

    async def result(self, workflow_id: str) -> ResearchResult:
        try:
            async with self._about(workflow_id):
                return await self._handle(workflow_id).result()
        except WorkflowFailureError as err:
            raise CairnError(f"run {workflow_id} failed: {err.cause}") from None

    async def describe_status(self, workflow_id: str) -> WorkflowExecutionStatus | None:
        async with self._about(workflow_id):
            return (await self._handle(workflow_id).describe()).status

    async def running_activities(self, workflow_id: str) -> list[RunningActivity]:
        """The activities in flight now, in the run and in its running step workflows, each with the
        summary its workflow gave it (`plan v2`, `run code: step s3`)."""
        running: list[RunningActivity] = []
        pending_workflows = [workflow_id]
        while pending_workflows:
            wid = pending_workflows.pop(0)
            async with self._about(wid):
                try:
                    raw = (await self.temporal.get_workflow_handle(wid).describe()).raw_description
                except RPCError as err:
                    # A step's child is pending from the moment its start is initiated, before the
                    # server has the execution: nothing of it runs yet.
                    if wid != workflow_id and err.status == RPCStatusCode.NOT_FOUND:
                        continue
                    raise
            pending_workflows += [c.workflow_id for c in raw.pending_children]
            if not raw.pending_activities:
                continue
            try:
                summaries = await self._activity_summaries(wid)
            except RPCError as err:
                # A child just described can answer a history read with "not found" (seen on the dev
                # server as a step started): its activities are listed without their summaries then.
                if wid == workflow_id or err.status != RPCStatusCode.NOT_FOUND:
                    raise
                summaries = {}
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
        """The newest `limit` runs, newest first (by start time)."""
        runs = []
        executions, _ = await newest_first(
            self.temporal, f"WorkflowType = '{RESEARCH_WORKFLOW}'", limit, None
        )
        for execution in executions:
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

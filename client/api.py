"""Cairn's Python API: start, steer and read research runs. The `cairn` CLI is built on this.

Input is validated here, before anything reaches Temporal, so a person sees a clear error instead of a
failed workflow. Signals carry the plan version they act on; when the caller gives none, the current
version is read first and the run must be awaiting approval.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from client.connection import connect
from common.config import TemporalConfig
from common.models import (
    AbortRun,
    ApprovePlan,
    EditPlan,
    Plan,
    RequestChanges,
    ResearchInput,
    ResearchResult,
    RunStatus,
    StepSpec,
)
from common.names import (
    QUERY_STATUS,
    RESEARCH_WORKFLOW,
    SIGNAL_ABORT,
    SIGNAL_APPROVE_PLAN,
    SIGNAL_REQUEST_CHANGES,
    UPDATE_EDIT_PLAN,
)


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


class CairnClient:
    def __init__(self, client: Client, task_queue: str) -> None:
        self.temporal = client
        self.task_queue = task_queue

    @classmethod
    async def connect(cls, config: TemporalConfig | None = None) -> CairnClient:
        config = config or TemporalConfig.from_env()
        return cls(await connect(config), config.task_queue)

    def _handle(self, workflow_id: str) -> WorkflowHandle[Any, Any]:
        return self.temporal.get_workflow_handle(workflow_id, result_type=ResearchResult)

    async def start(self, question: str, *, workflow_id: str | None = None, **options: Any) -> str:
        request = validated_input(question, **options)
        workflow_id = workflow_id or f"research-{uuid.uuid4().hex[:12]}"
        await self.temporal.start_workflow(
            RESEARCH_WORKFLOW, request, id=workflow_id, task_queue=self.task_queue
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

    async def abort(self, workflow_id: str, reason: str = "") -> None:
        await self._handle(workflow_id).signal(SIGNAL_ABORT, AbortRun(reason=reason))

    async def result(self, workflow_id: str) -> ResearchResult:
        try:
            return await self._handle(workflow_id).result()
        except WorkflowFailureError as err:
            raise CairnError(f"run {workflow_id} failed: {err.cause}") from None

    async def describe_status(self, workflow_id: str) -> WorkflowExecutionStatus | None:
        return (await self._handle(workflow_id).describe()).status

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

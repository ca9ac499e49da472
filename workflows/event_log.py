"""What a run tells its watchers: each change of its state, once, as an event in its workflow stream.

ResearchWorkflow calls `observe` wherever its state changes (the same place it refreshes the Web UI's
details); this compares the state with what was last told and publishes the differences as RunEvents
(common/events.py). Deterministic: publishing appends to the stream's log in workflow memory and makes
no command, so histories recorded before the stream existed replay unchanged, and a replay rebuilds the
same log with the same offsets.

A continuation starts from the carried plan and usage, so nothing already told is told twice; the
stream itself (its log and offsets) travels in `Carried.stream`.

Must never: publish anything that is not the run's own state, or read a clock other than workflow time.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.contrib.workflow_streams import WorkflowStream

from common.events import EVENTS_TOPIC, EventType, RunEvent
from common.models import Finding, Phase, Plan, Usage


def _plan_key(plan: Plan) -> tuple[object, ...]:
    """What makes a plan worth telling again: a new version, or a step added to this one."""
    return (plan.version, tuple((s.id, s.title, s.kind, s.description) for s in plan.steps))


class RunEvents:
    def __init__(self, stream: WorkflowStream, plan: Plan | None = None, usage: Usage | None = None) -> None:
        self._topic = stream.topic(EVENTS_TOPIC, type=RunEvent)
        self._phase: Phase | None = None
        self._waiting_for: str | None = None
        self._plan: tuple[object, ...] | None = _plan_key(plan) if plan else None
        self._steps: dict[str, str] = {s.id: s.status for s in plan.steps} if plan else {}
        self._spend: tuple[int, int, int] = self._spend_key(usage or Usage())

    @staticmethod
    def _spend_key(usage: Usage) -> tuple[int, int, int]:
        return (usage.llm_calls, usage.input_tokens, usage.output_tokens)

    def _tell(self, event_type: EventType, **fields: object) -> None:
        self._topic.publish(RunEvent.model_validate({"type": event_type, "at": _now(), **fields}))

    def observe(
        self,
        phase: Phase,
        waiting_for: str | None,
        plan: Plan | None,
        findings: dict[str, Finding],
        usage: Usage,
    ) -> None:
        if plan is not None and _plan_key(plan) != self._plan:
            self._plan = _plan_key(plan)
            self._tell("plan", plan=plan.model_copy(deep=True))
        for step in plan.steps if plan else []:
            before = self._steps.get(step.id)
            if step.status == before:
                continue
            self._steps[step.id] = step.status
            if step.status == "running":
                self._tell("step_started", step=step.model_copy())
            elif step.status in ("done", "failed", "skipped"):
                finding = findings.get(step.id) if step.status == "done" else None
                self._tell(
                    "step_finished",
                    step=step.model_copy(),
                    summary=finding.summary if finding else None,
                    sources=finding.sources if finding else None,
                )
        spend = self._spend_key(usage)
        if spend != self._spend:
            self._spend = spend
            self._tell("spend", usage=usage.model_copy())
        if (phase, waiting_for) != (self._phase, self._waiting_for):
            self._phase, self._waiting_for = phase, waiting_for
            self._tell("phase", phase=phase, waiting_for=waiting_for)

    def finish(self, event_type: EventType, usage: Usage, reason: str | None = None) -> None:
        """The run's last event: done, aborted or failed."""
        self._tell(event_type, usage=usage.model_copy(), reason=reason)


def _now() -> str:
    return workflow.now().isoformat()

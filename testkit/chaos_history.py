"""Readers of a chaos run's histories: what workers did to a run, and what a run waits on.

Why this exists: "no completed call runs again" and "runs move again within seconds" are claims about
what happened inside Temporal, so the evidence is read from history (who started and completed which
task, when) and from the server's description of pending work, not from outputs. `trace_run` reads a
run and its child workflows across continue-as-new into a `Trace`; `waiting_on` describes what an open
run waits on as `Waiting`. testkit/chaos.py calls these while and after it breaks things;
testkit/chaos_checks.py turns what they read into verdicts.

Must never: write to a workflow (it only reads history and descriptions), or judge what it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from temporalio.api.enums.v1 import EventType, PendingActivityState, PendingWorkflowTaskState, TimeoutType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from common.names import LLM_CHAT, NODE_FINDING, NODE_MODEL, RESEARCHER_GRAPH

LLM_ACTIVITIES = frozenset(
    {LLM_CHAT, f"{RESEARCHER_GRAPH}.{NODE_MODEL}", f"{RESEARCHER_GRAPH}.{NODE_FINDING}"}
)

# -- histories -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A workflow task or an activity a worker started or completed: work on the run, by `identity`."""

    at: float
    identity: str
    workflow_id: str
    what: str  # "workflow task" or the activity type
    done: bool  # completed (else started)


@dataclass
class Trace:
    """One run and its child workflows (every run of each, across continue-as-new), from history."""

    workflow_id: str
    workflows: list[str] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)
    # (scheduled, closed) of every LLM activity that completed: the calls the run paid for once.
    llm_completed: list[tuple[float, float]] = field(default_factory=list)
    # How many activities ended on each attempt number (plain dict: dataclasses.asdict mangles Counters).
    attempts: dict[int, int] = field(default_factory=dict)
    # (when, "schedule_to_start" or "start_to_close", workflow id) of every workflow task that timed out
    workflow_task_timeouts: list[tuple[float, str, str]] = field(default_factory=list)
    closed_at: float | None = None


def _seconds(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


async def trace_run(client: Client, workflow_id: str) -> Trace:
    """Run `workflow_id` and its child workflows, each across continue-as-new, read into one Trace."""
    trace = Trace(workflow_id)
    pending = [workflow_id]
    while pending:
        wid = pending.pop(0)
        trace.workflows.append(wid)
        run_id: str | None = None
        while True:  # the latest run first, then back along continue-as-new
            history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
            pending += _read_history(trace, wid, history.events)
            first = history.events[0].workflow_execution_started_event_attributes
            if not first.continued_execution_run_id:
                break
            run_id = first.continued_execution_run_id
    return trace


def _read_history(trace: Trace, wid: str, events: Sequence[HistoryEvent]) -> list[str]:
    scheduled: dict[int, tuple[str, float]] = {}
    children = []
    for e in events:
        t = e.event_type
        if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = e.activity_task_scheduled_event_attributes
            scheduled[e.event_id] = (attrs.activity_type.name, _seconds(e))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            # Written when the attempt ends, with the time it started: only the last attempt shows.
            started = e.activity_task_started_event_attributes
            trace.attempts[started.attempt] = trace.attempts.get(started.attempt, 0) + 1
            kind = scheduled[started.scheduled_event_id][0]
            trace.progress.append(Progress(_seconds(e), started.identity, wid, kind, done=False))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = e.activity_task_completed_event_attributes
            kind, at = scheduled[done.scheduled_event_id]
            trace.progress.append(Progress(_seconds(e), done.identity, wid, kind, done=True))
            if kind in LLM_ACTIVITIES:
                trace.llm_completed.append((at, _seconds(e)))
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            identity = e.workflow_task_started_event_attributes.identity
            trace.progress.append(Progress(_seconds(e), identity, wid, "workflow task", done=False))
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            identity = e.workflow_task_completed_event_attributes.identity
            trace.progress.append(Progress(_seconds(e), identity, wid, "workflow task", done=True))
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            timeout = e.workflow_task_timed_out_event_attributes.timeout_type
            sticky = timeout == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START
            kind = "schedule_to_start" if sticky else "start_to_close"
            trace.workflow_task_timeouts.append((_seconds(e), kind, wid))
        elif t == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            children.append(
                e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
            )
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED and wid == trace.workflow_id:
            trace.closed_at = max(trace.closed_at or 0.0, _seconds(e))
    return children


# -- what a run waits on ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """What one workflow of a run had pending at `at`, from DescribeWorkflowExecution: the evidence of
    why a run stood still. `backoff_until` is set only when *all* its pending work was activities
    waiting out a retry backoff (nothing a worker could take before then)."""

    at: float
    workflow_id: str
    workflow_task: str  # "" (none), "scheduled" or "started"
    activities: list[str]  # "<type> <state> attempt=<n> [next=<+s>] [by=<identity>] [failed=<why>]"
    children: list[str]
    backoff_until: float | None


def _ts(stamp: object) -> float | None:
    seconds = getattr(stamp, "seconds", 0) + getattr(stamp, "nanos", 0) / 1e9
    return seconds or None


async def waiting_on(client: Client, workflow_id: str, at: float) -> list[Waiting]:
    """What the open workflow `workflow_id` and its open children wait on, one Waiting each."""
    found: list[Waiting] = []
    pending = [workflow_id]
    while pending:
        wid = pending.pop(0)
        raw = (await client.get_workflow_handle(wid).describe()).raw_description
        task = raw.pending_workflow_task if raw.HasField("pending_workflow_task") else None
        task_state = (
            ""
            if task is None
            else PendingWorkflowTaskState.Name(task.state)
            .removeprefix("PENDING_WORKFLOW_TASK_STATE_")
            .lower()
        )
        activities, backoffs, busy = [], [], bool(task_state)
        for a in raw.pending_activities:
            state = PendingActivityState.Name(a.state).removeprefix("PENDING_ACTIVITY_STATE_").lower()
            text = f"{a.activity_type.name} {state} attempt={a.attempt}"
            next_at = _ts(a.next_attempt_schedule_time)
            if next_at is not None:
                text += f" next=+{next_at - at:.2f}s"
            if a.last_worker_identity:
                text += f" by={a.last_worker_identity}"
            if a.HasField("last_failure"):
                text += f" failed={a.last_failure.message[:120]!r}"
            activities.append(text)
            if a.state == PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED and next_at and next_at > at:
                backoffs.append(next_at)
            else:
                busy = True
        children = [c.workflow_id for c in raw.pending_children]
        pending += children
        until = min(backoffs) if backoffs and not busy else None
        found.append(Waiting(at, wid, task_state, activities, children, until))
    return found

"""A run's events: what `GET /v1/runs/{id}/events` streams and what a run's workflow stream holds.

Each event is published into the run's own workflow stream (temporalio.contrib.workflow_streams), so its
place in the stream (its offset) is durable: the workflow's state carries it, through crashes, worker
restarts and continue-as-new. The API turns offset n into the SSE id n + 1, which is why a client that
reconnects with Last-Event-ID resumes exactly after what it read, whichever API process serves it.

The workflow publishes phase changes, plan versions, steps started and finished (with the finding's
summary and sources), spend and the end of the run; tool activities publish their tool calls. Payloads
are Tolerant models, so a newer event with more fields is read by an older client.

Must never: hold a secret or anything a tenant other than the run's own may not see (events are the
run's, shown to whoever may read the run).
"""

from __future__ import annotations

from typing import Final, Literal

from common.models import Phase, Plan, PlanStep, Source, Tolerant, Usage

# The stream topic of a run's events; the stream has no other topic today.
EVENTS_TOPIC: Final = "events"

EventType = Literal[
    "phase",  # the run's phase changed (and what it waits for, if anything)
    "plan",  # a plan version was made: drafted, revised, edited, replanned, or a step added
    "step_started",
    "step_finished",  # done, failed or skipped; a done step carries its finding's summary and sources
    "tool_call",  # a researcher's tool call or a coder's program run, published by the activity
    "spend",  # the run's usage changed
    "done",  # the last event of a run that completed: its report is written
    "aborted",  # the last event of an aborted run: a partial report is written
    "failed",  # the last event of a failed run
]
TERMINAL_EVENTS: Final = frozenset({"done", "aborted", "failed"})
MAX_TOOL_DETAIL_CHARS: Final = 300


class ToolCall(Tolerant):
    """One tool call of a step: which tool, on what (a query, a URL, a program's first line), and how
    it ended ("ok", or the error's type)."""

    step_id: str
    tool: str
    detail: str = ""
    outcome: str = "ok"


class RunEvent(Tolerant):
    type: EventType
    at: str  # ISO 8601, UTC: workflow time for the workflow's events, the worker's clock for tool calls
    phase: Phase | None = None
    waiting_for: str | None = None
    plan: Plan | None = None
    step: PlanStep | None = None
    summary: str | None = None  # step_finished of a done step: the finding's summary
    sources: list[Source] | None = None  # step_finished of a done step: the finding's sources
    tool: ToolCall | None = None
    usage: Usage | None = None
    reason: str | None = None  # why a run was aborted or failed

"""Tool calls told to the run they belong to: each researcher tool call and each coder program run
becomes a `tool_call` event in the run's workflow stream (common/events.py), published by the activity
that made it, through the SDK's WorkflowStreamClient (a signal to the run).

A step's workflow id is `<run>/<step>`, so the activity knows its run without being told. A worker
keeps one publisher per run, so the calls of parallel steps that come together share a signal. Telling
is best effort: a run that cannot be reached (gone, or Temporal busy) costs the tool call nothing, and the
event is lost rather than the work. A retried attempt is a call of its own, and is told again.

Must never: fail or delay a tool call beyond one signal, or put anything in an event that the run's own
tenant may not see (the detail is the query, the URL or the program's first line, bounded).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from common.events import EVENTS_TOPIC, MAX_TOOL_DETAIL_CHARS, RunEvent, ToolCall

# A signal that has not gone through in this time is given up: the tool call does not wait for it.
PUBLISH_PATIENCE = timedelta(seconds=5)
# A run's publisher unused this long is let go (a new one is made when the run calls a tool again).
IDLE_SECONDS = 60.0


class _Publishers:
    """One stream publisher per run in this worker process. Calls of one run that come while its
    previous signal is on the way share the next signal (the publisher's flush sends everything
    buffered when it gets its turn), so parallel steps' tool calls cost the run fewer signals, and
    fewer workflow tasks, than calls; each call still waits until its own event has been delivered,
    so it is in the run's stream before the call's result is."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[WorkflowStreamClient, float]] = {}

    def of(self, client: Client, run_id: str) -> WorkflowStreamClient:
        now = time.monotonic()
        for idle in [r for r, (_, used) in self._open.items() if now - used > IDLE_SECONDS]:
            del self._open[idle]
        stream = self._open.get(run_id, (None, 0.0))[0]
        if stream is None:
            stream = WorkflowStreamClient.create(client, run_id, max_retry_duration=PUBLISH_PATIENCE)
        self._open[run_id] = (stream, now)
        return stream

    def forget(self, run_id: str) -> None:
        self._open.pop(run_id, None)


_PUBLISHERS = _Publishers()


async def tell_tool_call(tool: str, detail: str, outcome: str = "ok") -> None:
    try:
        workflow_id = activity.info().workflow_id or ""
        client = activity.client()
    except RuntimeError:  # Not in a worker's activity (a test's ActivityEnvironment): nobody to tell.
        return
    run_id, _, step_id = workflow_id.partition("/")
    if not step_id:
        return  # Not a step of a run.
    event = RunEvent(
        type="tool_call",
        at=datetime.now(UTC).isoformat(),
        tool=ToolCall(
            step_id=step_id,
            tool=tool,
            detail=" ".join(detail.split())[:MAX_TOOL_DETAIL_CHARS],
            outcome=outcome,
        ),
    )
    stream = _PUBLISHERS.of(client, run_id)
    try:
        stream.topic(EVENTS_TOPIC, type=RunEvent).publish(event)
        await asyncio.wait_for(stream.flush(), PUBLISH_PATIENCE.total_seconds())
    except Exception as err:  # Best effort by design: the tool's answer matters, the event less.
        _PUBLISHERS.forget(run_id)  # A publisher whose signal failed is not used again.
        activity.logger.warning("could not tell run %s of a %s call: %s", run_id, tool, str(err)[:200])

"""`cairn watch ID`: a run's live progress in the terminal, until the run ends.

Why this exists: between `cairn research` and `cairn report` a person wants to see the plan's steps
fill in, the activity running now (by the summary its workflow gave it) and the spend, without opening
the Web UI. Everything comes from client/api.py (the `status` query and `describe`), so the watch never
changes a run.

On a terminal it redraws in place with progress bars (rich); into a pipe or a file it prints one line
per change instead, so logs stay readable. Exit codes: 0 when the run is done or aborted, 1 when it
failed or was closed by Temporal (terminated, timed out).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from temporalio.client import WorkflowExecutionStatus

from client.api import CairnClient, RunningActivity
from client.http_client import ApiClient
from common.models import RunStatus

Runs = CairnClient | ApiClient

FINISHED = ("done", "aborted")
_STYLE = {"pending": "dim", "running": "yellow", "done": "green", "failed": "red", "skipped": "dim"}
_MARK = {"pending": "·", "running": "▶", "done": "✓", "failed": "✗", "skipped": "-"}


@dataclass
class Snapshot:
    status: RunStatus
    running: list[RunningActivity] = field(default_factory=list)


def _activity_line(a: RunningActivity) -> str:
    text = a.summary or a.activity_type
    if a.attempt > 1:
        text += f" (attempt {a.attempt})"
    return text if a.started else f"{text} (queued)"


def render(workflow_id: str, snap: Snapshot) -> RenderableType:
    """The live view: phase, a progress bar over the plan's steps, each step, what runs now, spend."""
    status = snap.status
    parts: list[RenderableType] = [Text.assemble(("Run ", "bold"), workflow_id, ": ", (status.phase, "bold"))]
    if status.plan is not None:
        steps = status.plan.steps
        finished = sum(s.status in ("done", "failed", "skipped") for s in steps)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            f"Plan v{status.plan.version}",
            ProgressBar(total=max(len(steps), 1), completed=finished, width=40),
            f"{finished}/{len(steps)} steps",
        )
        parts.append(bar)
        table = Table.grid(padding=(0, 1))
        for step in steps:
            style = _STYLE.get(step.status, "")
            table.add_row(
                Text(_MARK.get(step.status, "?"), style=style),
                Text(step.id, style="bold"),
                Text(f"{step.title} ({step.kind})", style=style),
                Text(step.error or "", style="red"),
            )
        parts.append(table)
    for activity in snap.running:
        parts.append(Text.assemble(("Now: ", "bold cyan"), _activity_line(activity)))
    if status.waiting_for:
        parts.append(
            Text.assemble(("Awaiting ", "bold magenta"), f"{status.waiting_for}: cairn approve {workflow_id}")
        )
    parts.append(Text.assemble(("Spend: ", "bold"), status.usage.describe()))
    if status.report_path:
        parts.append(Text(f"Report: {status.report_path}"))
    if status.error:
        parts.append(Text(f"Error: {status.error}", style="red"))
    return Group(*parts)


def changes(workflow_id: str, before: Snapshot | None, now: Snapshot) -> list[str]:
    """Plain lines for what changed since `before`: used when stdout is not a terminal."""
    lines: list[str] = []
    old = before.status if before else None
    status = now.status
    if old is None or old.phase != status.phase:
        lines.append(f"phase: {status.phase}")
    old_steps = {s.id: s.status for s in (old.plan.steps if old and old.plan else [])}
    if status.plan is not None:
        if old is None or old.plan is None or old.plan.version != status.plan.version:
            lines.append(f"plan v{status.plan.version}: {len(status.plan.steps)} steps")
        for step in status.plan.steps:
            if old_steps.get(step.id) != step.status:
                lines.append(f"step {step.id} {step.status}: {step.title}")
    before_now = {_activity_line(a) for a in before.running} if before else set()
    lines += [f"now: {_activity_line(a)}" for a in now.running if _activity_line(a) not in before_now]
    if status.waiting_for and (old is None or old.waiting_for != status.waiting_for):
        lines.append(f"awaiting {status.waiting_for}: cairn approve {workflow_id}")
    if old is None or old.usage != status.usage:
        lines.append(f"spend: {status.usage.describe()}")
    return lines


async def _snapshot(cairn: Runs, workflow_id: str) -> Snapshot:
    status = await cairn.status(workflow_id)
    running = [] if status.phase in (*FINISHED, "failed") else await cairn.running_activities(workflow_id)
    return Snapshot(status=status, running=running)


async def _closed_badly(cairn: Runs, workflow_id: str) -> bool:
    """A run Temporal closed without Cairn finishing it (terminated, timed out, failed)."""
    state = await cairn.describe_status(workflow_id)
    return state not in (None, WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED)


async def watch(cairn: Runs, workflow_id: str, console: Console, interval: float = 1.0) -> int:
    """Follow the run until it ends; returns the exit code."""
    live = Live(console=console, refresh_per_second=4, transient=False) if console.is_terminal else None
    previous: Snapshot | None = None
    try:
        if live is not None:
            live.start()
        while True:
            snap = await _snapshot(cairn, workflow_id)
            if live is not None:
                live.update(render(workflow_id, snap), refresh=True)
            else:
                for line in changes(workflow_id, previous, snap):
                    console.print(line, highlight=False, soft_wrap=True, markup=False)
            previous = snap
            if snap.status.phase in FINISHED:
                return 0
            if snap.status.phase == "failed" or await _closed_badly(cairn, workflow_id):
                return 1
            await asyncio.sleep(interval)
    finally:
        if live is not None:
            live.stop()

"""Small helpers the tests share: waiting on a run's phase, reading its history, scraping metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from client.api import CairnClient
from common.models import RunStatus


async def wait_for(cairn: CairnClient, workflow_id: str, *phases: str, seconds: float = 30) -> RunStatus:
    deadline = time.monotonic() + seconds
    status = None
    while time.monotonic() < deadline:
        try:
            status = await cairn.status(workflow_id)
        except Exception:
            status = None
        if status is not None and status.phase in phases:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} never reached {phases}; last status: {status}")


async def history(cairn: CairnClient, workflow_id: str) -> WorkflowHistory:
    return await cairn.temporal.get_workflow_handle(workflow_id).fetch_history()


def scheduled_activities(hist: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in hist.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def started_attempts(hist: WorkflowHistory) -> list[int]:
    return [
        e.activity_task_started_event_attributes.attempt
        for e in hist.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


def events_of(hist: WorkflowHistory, event_type: int) -> list:
    return [e for e in hist.events if e.event_type == event_type]


async def run(
    *command: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    seconds: float = 120,
    cwd: Path | None = None,
) -> tuple[int, str, str]:
    """Run a command without blocking the event loop (the test's worker runs on that loop)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), seconds)
    code = process.returncode or 0
    if check and code != 0:
        raise AssertionError(f"{command} exited {code}\nstdout: {out.decode()}\nstderr: {err.decode()}")
    return code, out.decode(), err.decode()


Sample = tuple[str, dict[str, str], float]


def parse_prometheus(text: str) -> list[Sample]:
    """`name{a="x",b="y"} value` lines of the Prometheus text format (no escapes in Cairn's labels)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = dict(
            (k, v.strip('"')) for k, v in (p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
        )
        samples.append((name, labels, float(value)))
    return samples


async def scrape(port: int) -> list[Sample]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return parse_prometheus(response.text)

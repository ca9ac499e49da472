"""Runs newest first from the real dev server's visibility store, which itself lists running runs
first and refuses ORDER BY: whole listings, windows of start time (narrowed when too full, widened
when too empty) and cursors that neither skip nor repeat a run."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.client import Client

from client import listing
from client.listing import Position, newest_first


async def started_runs(client: Client, workflow_type: str, count: int, gap: float) -> list[str]:
    """`count` executions of a type no worker polls (so they stay running), `gap` seconds apart; the
    ids in the order they started."""
    ids = []
    for n in range(count):
        handle = await client.start_workflow(
            workflow_type, id=f"{workflow_type}-{n}", task_queue=workflow_type
        )
        ids.append(handle.id)
        await asyncio.sleep(gap)
    deadline = asyncio.get_running_loop().time() + 20
    query = f"WorkflowType = '{workflow_type}'"
    while (await client.count_workflows(query)).count < count:
        assert asyncio.get_running_loop().time() < deadline, "visibility never showed the runs"
        await asyncio.sleep(0.1)
    return ids


async def every_page(client: Client, query: str, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after: Position | None = None
    while True:
        page, after = await newest_first(client, query, limit, after)
        pages.append([e.id for e in page])
        if after is None:
            return pages
        assert len(pages) < 20, "the cursor never reached the end"


@pytest.mark.parametrize("way", ["at once", "by windows"])
async def test_runs_list_newest_first_across_pages(
    temporal_client: Client, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    workflow_type = f"listing-{uuid.uuid4().hex[:8]}"
    ids = await started_runs(temporal_client, workflow_type, 7, gap=0.12)
    # The newest run ends first; visibility would now list it last, after the six still running.
    await temporal_client.get_workflow_handle(ids[-1]).terminate("finished first")
    await temporal_client.get_workflow_handle(ids[2]).terminate("finished second")
    query = f"WorkflowType = '{workflow_type}'"
    if way == "by windows":
        # Windows of 0.3 s widening 4 at a time, at most 2 runs read at once: every path of the loop.
        monkeypatch.setattr(listing, "ALL_AT_ONCE", 1)
        monkeypatch.setattr(listing, "MAX_WINDOW_ROWS", 2)
        monkeypatch.setattr(listing, "FIRST_WINDOW", timedelta(seconds=0.3))
        monkeypatch.setattr(listing, "WIDEN", 4)
        monkeypatch.setattr(listing, "NARROWEST", timedelta(milliseconds=50))
    try:
        pages = await every_page(temporal_client, query, 3)
        assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]
        assert await every_page(temporal_client, query, 7) == [ids[::-1]]
        assert await every_page(temporal_client, f"{query} AND ExecutionStatus = 'Running'", 4) == [
            [ids[5], ids[4], ids[3], ids[1]],
            [ids[0]],
        ]
        assert await every_page(temporal_client, "WorkflowType = 'nothing-of-the-kind'", 3) == [[]]
    finally:
        for run_id in ids:
            try:
                await temporal_client.get_workflow_handle(run_id).terminate("test over")
            except Exception:  # Already terminated above.
                pass


async def test_runs_started_in_the_same_instant_are_ordered_by_id(temporal_client: Client) -> None:
    workflow_type = f"listing-{uuid.uuid4().hex[:8]}"
    ids = await started_runs(temporal_client, workflow_type, 4, gap=0)
    query = f"WorkflowType = '{workflow_type}'"
    try:
        pages = await every_page(temporal_client, query, 1)
        flat = [i for page in pages for i in page]
        assert sorted(flat) == sorted(ids) and len(flat) == 4  # None skipped, none repeated.
        starts = {e.id: e.start_time async for e in temporal_client.list_workflows(query)}
        assert flat == sorted(ids, key=lambda i: (starts[i], i), reverse=True)
    finally:
        for run_id in ids:
            await temporal_client.get_workflow_handle(run_id).terminate("test over")

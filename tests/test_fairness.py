"""Fair sharing: one tenant's backlog does not starve another tenant's run.

The LLM queue is the bottleneck on purpose (one call at a time, each slow), so tasks back up on the
Temporal server, where fairness decides the order. Tenant A starts many runs through the API, then
tenant B starts one: B's first model call is served next, not after A's backlog. A control arm starts
the same shape with one fairness key for both "tenants" and shows B waiting behind the whole backlog,
so the assertion is about fairness, not luck. Orders are asserted, never times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from common.config import LLMLimits
from common.models import ResearchInput
from testkit.dev_server import DevServer
from testkit.scripted_llm import Recorded
from tests.api_support import ApiStack, api_stack

BACKLOG = 6
LATENCY = 0.15
SHAPE: dict[str, Any] = {"auto_approve": True, "max_steps": 1, "max_plan_iterations": 0}


@pytest.fixture(scope="module")
async def stack(
    dev_server: DevServer,
    temporal_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    payload_dir: Path,
) -> AsyncIterator[ApiStack]:
    async for built in api_stack(
        dev_server,
        temporal_client,
        tmp_path_factory.mktemp("fair"),
        payload_dir,
        llm_limits=LLMLimits(max_concurrent=1),
    ):
        built.llm.latency = LATENCY
        yield built


def asked_by(record: Recorded, marker: str) -> bool:
    """Whether a recorded model request belongs to the run whose question carries `marker` (the test
    reads the requests; the scripted model never looks at this)."""
    return any(marker in str(m.get("content", "")) for m in record.messages)


async def served_before(stack: ApiStack, marker_b: str, marker_a: str) -> int:
    """How many of A's model calls were served after B started and before B's first call."""
    deadline = asyncio.get_running_loop().time() + 60
    while not any(asked_by(r, marker_b) for r in stack.llm.requests):
        assert asyncio.get_running_loop().time() < deadline, "B's run never reached the model"
        await asyncio.sleep(0.05)
    first_b = next(i for i, r in enumerate(stack.llm.requests) if asked_by(r, marker_b))
    return sum(1 for r in stack.llm.requests[:first_b] if asked_by(r, marker_a))


async def finish_all(stack: ApiStack, run_ids: list[str]) -> None:
    """Let the runs end on their own (quickly now), so no worker stops in the middle of one."""
    stack.llm.latency = 0.0
    try:
        for run_id in run_ids:
            await stack.temporal.get_workflow_handle(run_id).result()
    finally:
        stack.llm.latency = LATENCY


async def test_a_tenants_backlog_does_not_starve_another_tenants_run(stack: ApiStack) -> None:
    async with await stack.client("flood") as flood, await stack.client("trickle") as trickle:
        flood_runs = []
        for n in range(BACKLOG):
            answer = await flood.post("/v1/runs", json={"question": f"Flood question {n}?", **SHAPE})
            assert answer.status_code == 201
            flood_runs.append(answer.json()["id"])
        while sum(1 for r in stack.llm.requests if asked_by(r, "Flood question")) < 1:
            await asyncio.sleep(0.02)
        answer = await trickle.post("/v1/runs", json={"question": "Trickle question?", **SHAPE})
        assert answer.status_code == 201
        ahead = await served_before(stack, "Trickle question", "Flood question")
        # Under first-come-first-served, every queued planning call of the flood goes first.
        assert ahead <= 2, f"{ahead} of the flood's calls were served before the other tenant's first"
        await finish_all(stack, [*flood_runs, answer.json()["id"]])


async def test_control_one_fairness_key_queues_behind_the_backlog(stack: ApiStack) -> None:
    """The same shape with both runs under one fairness key: the late run waits for the backlog."""
    stack.llm.requests.clear()
    started = []
    for n in range(BACKLOG):
        run_id = await stack_start(stack, f"Same-key flood {n}?")
        started.append(run_id)
    while sum(1 for r in stack.llm.requests if asked_by(r, "Same-key flood")) < 1:
        await asyncio.sleep(0.02)
    started.append(await stack_start(stack, "Same-key late question?"))
    ahead = await served_before(stack, "Same-key late question", "Same-key flood")
    assert ahead >= BACKLOG - 1, f"only {ahead} calls went first: fairness keys are not what orders this"
    await finish_all(stack, started)


async def stack_start(stack: ApiStack, question: str) -> str:
    """A run of tenant `shared` started directly, as the API starts one (same priority)."""
    from client.api import CairnClient

    cairn = CairnClient(stack.temporal, stack.task_queue)
    run_id = f"shared.{abs(hash(question)):x}"
    await cairn.start_run(ResearchInput(question=question, tenant="shared", **SHAPE), run_id)
    return run_id

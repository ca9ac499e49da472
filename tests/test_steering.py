"""Steering a running run (skip_step, add_step), budgets and deadlines (pause, raise_budget, finish),
and continue-as-new for long runs, against the real dev server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import RawValue
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from client.api import CairnClient, CairnError
from common.config import ModelPrice, TemporalConfig
from common.events import EVENTS_TOPIC, TERMINAL_EVENTS
from common.plugin import connect
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import llm_config
from tests.helpers import events_of, history, wait_for
from worker import build_worker


async def wait_step(cairn: CairnClient, wid: str, step_id: str, status: str, seconds: float = 30) -> None:
    for _ in range(int(seconds * 10)):
        plan = (await cairn.status(wid)).plan
        if plan and any(s.id == step_id and s.status == status for s in plan.steps):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"step {step_id} of {wid} never became {status}")


async def test_skip_a_running_and_a_pending_step_and_add_one(cairn: CairnClient, llm: ScriptedLLM) -> None:
    # Step s1's finding hangs, so s1 is caught running; one step at a time keeps s3 pending.
    llm.answer_next("too late", role="finding", delay=30)
    wid = await cairn.start(
        "Steered [steps=3]", auto_approve=True, max_parallel_steps=1, max_plan_iterations=0
    )
    while llm.calls("finding") < 1:
        await asyncio.sleep(0.05)
    await cairn.skip_step(wid, "s3")
    await cairn.skip_step(wid, "s1")
    await cairn.add_step(wid, "A step added while it ran")
    await cairn.skip_step(wid, "nope")  # Unknown: logged and ignored, the run goes on.
    result = await cairn.result(wid)

    steps = {s.id: s for s in result.plan.steps}  # type: ignore[union-attr]
    assert [steps[i].status for i in ("s1", "s2", "s3", "s4")] == ["skipped", "done", "skipped", "done"]
    assert steps["s1"].error == "skipped by a person while it ran"
    assert steps["s3"].error == "skipped by a person" and steps["s4"].title == "A step added while it ran"
    assert "A step added while it ran" in result.report
    assert "## Steps not completed" in result.report and "skipped by a person" in result.report
    # The running step's child was cancelled, and so was its activity (it heard of it by heartbeat).
    child = await history(cairn, f"{wid}/s1")
    assert events_of(child, EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
    assert events_of(child, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED)
    assert llm.calls("finding") == 3  # s1's (cut short), s2's and s4's.


async def test_a_replan_keeps_what_people_steered(cairn: CairnClient, llm: ScriptedLLM) -> None:
    llm.answer_next(json.dumps({"summary": "Slow finding.", "claims": []}), role="finding", delay=2)
    wid = await cairn.start(
        "Steered then replanned [steps=2] [replan=1]", auto_approve=True, max_parallel_steps=1
    )
    while llm.calls("finding") < 1:
        await asyncio.sleep(0.05)
    await cairn.skip_step(wid, "s2")
    result = await cairn.result(wid)
    steps = [(s.id, s.title, s.status) for s in result.plan.steps]  # type: ignore[union-attr]
    # The replan added a follow-up and kept the skipped step, which the report lists as not completed.
    assert steps[:2] == [
        ("s1", "Investigate aspect 1 of the question", "done"),
        ("s2", "Investigate aspect 2 of the question", "skipped"),
    ]
    assert steps[2][1:] == ("Follow-up 1", "done")
    assert "Investigate aspect 2 of the question: skipped (skipped by a person)" in result.report


async def test_a_reached_budget_pauses_until_raised(cairn: CairnClient, llm: ScriptedLLM) -> None:
    wid = await cairn.start(
        "Budgeted run [steps=2]", auto_approve=True, max_plan_iterations=0, token_budget=50
    )
    status = await wait_for(cairn, wid, "paused")
    assert status.budget.reached and "token budget" in status.budget.reached
    assert status.budget.tokens_spent > 50 and status.budget.tokens_remaining == 0
    assert status.waiting_for and "raise_budget" in status.waiting_for
    assert llm.calls() == 1  # The plan; no step started.
    with pytest.raises(CairnError, match="not above"):
        await cairn.raise_budget(wid, token_budget=10)  # Refused by the validator: still reached.
    raised = await cairn.raise_budget(wid, token_budget=1_000_000)
    assert raised.token_budget == 1_000_000 and raised.reached is None
    result = await cairn.result(wid)
    assert not result.aborted and all(s.status == "done" for s in result.plan.steps)  # type: ignore[union-attr]
    final = await cairn.status(wid)
    spent = final.budget.tokens_spent
    assert spent == result.usage.input_tokens + result.usage.output_tokens
    assert final.budget.tokens_remaining == 1_000_000 - spent


async def test_a_cost_budget_counts_the_configured_prices(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    # $1,000 per million tokens: the plan alone (a couple of hundred tokens) costs more than a cent.
    config = dataclasses.replace(llm_config(llm), prices={"gpt-4o-mini": ModelPrice(input=1000, output=1000)})
    async with build_worker(temporal_client, task_queue, config, home=tmp_path):
        cairn = CairnClient(temporal_client, task_queue)
        wid = await cairn.start(
            "Costly run [steps=1]", auto_approve=True, max_plan_iterations=0, cost_budget_usd=0.01
        )
        status = await wait_for(cairn, wid, "paused")
        assert status.budget.reached and "cost budget" in status.budget.reached
        assert status.budget.cost_spent_usd > 0.01 and status.budget.cost_remaining_usd == 0
        await cairn.raise_budget(wid, cost_budget_usd=100.0)
        result = await cairn.result(wid)
        spent = (await cairn.status(wid)).budget.cost_spent_usd
    assert result.usage.cost_usd == pytest.approx(spent)
    assert [s.status for s in result.plan.steps] == ["done"]  # type: ignore[union-attr]


async def test_a_passed_deadline_finishes_with_what_the_run_has(cairn: CairnClient, llm: ScriptedLLM) -> None:
    wid = await cairn.start(
        "Deadline run [steps=2]", max_plan_iterations=0, deadline_seconds=1.0, on_budget="finish"
    )
    await wait_for(cairn, wid, "awaiting_approval")
    await asyncio.sleep(1.2)  # The deadline passes while the plan waits for approval.
    await cairn.approve(wid)
    result = await cairn.result(wid)
    assert not result.aborted and "## Budget" in result.report and "the deadline" in result.report
    assert {s.status for s in result.plan.steps} == {"skipped"}  # type: ignore[union-attr]
    assert llm.calls("finding") == 0 and llm.calls("reporter") == 1  # The report is still written.


async def stream_events(client: Client, workflow_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(offset, event) of a run's event stream, until its last event."""
    read = []
    stream = WorkflowStreamClient.create(client, workflow_id)
    async for item in stream.subscribe(
        [EVENTS_TOPIC], result_type=RawValue, poll_cooldown=timedelta(milliseconds=50)
    ):
        event = json.loads(item.data.payload.data)
        read.append((item.offset, event))
        if event["type"] in TERMINAL_EVENTS:
            break
    return read


@pytest.fixture
def short_history_server(tmp_path: Path) -> Iterator[DevServer]:
    """A server that suggests continue-as-new after 40 history events."""
    server = DevServer(
        db_file=tmp_path / "can.db",
        extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"],
    ).start()
    yield server
    server.stop()


async def test_a_long_run_continues_as_new_without_repeating_work(
    short_history_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    client: Client = await connect(
        TemporalConfig.from_env({"TEMPORAL_ADDRESS": short_history_server.address})
    )
    async with build_worker(client, task_queue, llm_config(llm), home=tmp_path):
        cairn = CairnClient(client, task_queue)
        wid = await cairn.start("Long run [steps=2] [replan=2]", auto_approve=True, max_plan_iterations=2)
        watched = asyncio.create_task(stream_events(client, wid))  # read live, across the hand-overs
        result = await cairn.result(wid)
        status = await cairn.status(wid)
        live = await asyncio.wait_for(watched, 30)
        afterwards = await stream_events(client, wid)  # the closed run's stream, read from the start
    assert status.continued >= 1 and status.phase == "done"
    # The event stream went through every continuation: the same events live and afterwards, offsets
    # 0, 1, 2, ... with no gap and no repeat, plan versions in order, one end.
    assert live == afterwards and [o for o, _ in live] == list(range(len(live)))
    kinds = [e["type"] for _, e in live]
    assert kinds.count("done") == 1 and kinds[-1] == "done"
    versions = [e["plan"]["version"] for _, e in live if e["type"] == "plan"]
    assert versions == sorted(versions) and versions[-1] == result.plan.version  # type: ignore[union-attr]
    assert sum(1 for _, e in live if e["type"] == "step_finished") == 4
    assert [s.status for s in result.plan.steps] == ["done"] * 4  # type: ignore[union-attr]
    # Exactly the calls of a run that never continued: plan, two reviews, the report, and three per
    # step (two researcher turns and the finding) for four steps. None was made twice.
    assert llm.calls() == 4 + 4 * 3
    assert llm.calls("finding") == 4
    described = await client.get_workflow_handle(wid).describe()
    first_run = described.raw_description.workflow_execution_info.first_run_id
    first = await client.get_workflow_handle(wid, run_id=first_run).fetch_history()
    assert events_of(first, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW)
    # Every step's finding reached the report, including those found before the run continued.
    assert json.dumps(result.model_dump()).count("Follow-up") >= 2

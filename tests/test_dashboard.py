"""What the Web UI and the `temporal` CLI show of a run: current details, search attributes (and runs on a
server without them), activity and child summaries, and logs that name their workflow and activity."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from client.api import CairnClient
from client.embedded import temporal_binary
from common.config import ConfigError, LLMConfig, ModelPrice, TemporalConfig, model_prices
from common.models import Plan, PlanStep, Usage
from common.names import LLM_CHAT
from common.plugin import connect
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import llm_config
from tests.helpers import events_of, history, run, wait_for
from worker import build_worker
from workflows.details import render_details

UPSERT = EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES


def phase_upserts(hist: WorkflowHistory) -> list[str]:
    """The CairnPhase values a run upserted (`workflow.patched` upserts TemporalChangeVersion too)."""
    fields = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
        for e in events_of(hist, UPSERT)
    ]
    return [json.loads(f["CairnPhase"].data) for f in fields if "CairnPhase" in f]


def test_details_show_plan_phase_spend_and_the_command_to_act() -> None:
    plan = Plan(
        version=2,
        steps=[
            PlanStep(id="s1", title="Done one", status="done"),
            PlanStep(id="s2", title="Running one", status="running"),
            PlanStep(id="s3", title="Queued one"),
        ],
    )
    usage = Usage(llm_calls=3, input_tokens=12000, output_tokens=3400, cost_usd=0.01234)
    waiting = render_details("research-x", "awaiting_approval", plan, usage, "approval of plan v2")
    assert "**Awaiting approval of plan v2:** `cairn approve research-x`" in waiting
    assert "- [x] `s1` Done one" in waiting and "- [ ] `s3` Queued one" in waiting
    assert "3 LLM calls, 12,000 input and 3,400 output tokens, $0.0123" in waiting
    busy = render_details("research-x", "researching", plan, usage, None)
    assert "**Waiting for:** steps s2 (running); 1 more queued" in busy
    assert "cairn approve" not in busy
    done = render_details("research-x", "done", plan, usage, None)
    assert "`cairn report research-x`" in done


def test_model_prices_come_from_configuration() -> None:
    prices = model_prices({"CAIRN_MODEL_PRICES": '{"m": {"input": 1.5, "output": 3}}'})
    assert prices == {"m": ModelPrice(input=1.5, output=3.0)}
    config = LLMConfig(api_key="k", base_url=None, prices=prices)
    assert config.cost(("m-2025", "m"), 1_000_000, 1_000_000) == pytest.approx(4.5)
    assert config.cost(("unknown",), 10, 10) == 0.0  # No price configured: cost 0.
    with pytest.raises(ConfigError, match="CAIRN_MODEL_PRICES"):
        model_prices({"CAIRN_MODEL_PRICES": '{"m": {"input": 1}}'})


async def _listed(server: str, query: str, workflow_id: str, seconds: float = 20) -> bool:
    """Whether `temporal workflow list --query` finds the run (visibility lags a little)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, out, _ = await run(
            temporal_binary(), "workflow", "list", "--address", server, "--query", query, "-o", "json"
        )
        if workflow_id in {w["execution"]["workflowId"] for w in json.loads(out or "[]")}:
            return True
    return False


async def test_phase_and_owner_are_searchable(
    dev_server: DevServer, temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    async with build_worker(temporal_client, task_queue, llm_config(llm), home=tmp_path):
        cairn = CairnClient(temporal_client, task_queue, owner_name="alice")
        assert await cairn.registered_search_attributes() == {"CairnPhase", "CairnOwner", "CairnTenant"}
        wid = await cairn.start("Searchable run [steps=1]", max_plan_iterations=0)
        await wait_for(cairn, wid, "awaiting_approval")
        query = f"CairnPhase='awaiting_approval' AND CairnOwner='alice' AND WorkflowId='{wid}'"
        assert await _listed(dev_server.address, query, wid)
        await cairn.approve(wid)
        await cairn.result(wid)
        assert await _listed(dev_server.address, f"CairnPhase='done' AND WorkflowId='{wid}'", wid)
        hist = await history(cairn, wid)
    # One upsert per change of phase, never a repeat.
    assert phase_upserts(hist) == ["awaiting_approval", "researching", "reporting", "done"]
    assert hist.events[0].user_metadata.summary.data  # The question, shown in the Web UI's list.


@pytest.fixture
def bare_server(tmp_path: Path) -> Iterator[DevServer]:
    """A dev server that has never heard of Cairn's search attributes."""
    server = DevServer(db_file=tmp_path / "bare.db", search_attributes=False).start()
    yield server
    server.stop()


async def test_a_server_without_the_search_attributes_still_runs(
    bare_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": bare_server.address}), tracing=None)
    async with build_worker(client, task_queue, llm_config(llm), home=tmp_path):
        cairn = CairnClient(client, task_queue)
        assert await cairn.registered_search_attributes() == set()
        wid = await cairn.start("Unindexed run [steps=1]", auto_approve=True, max_plan_iterations=0)
        result = await cairn.result(wid)
        assert result.report and not phase_upserts(await history(cairn, wid))
        # A server Cairn owns gets them added (what `cairn dev` does for an older database).
        assert await cairn.register_search_attributes() == {"CairnPhase", "CairnOwner", "CairnTenant"}


async def test_summaries_name_each_activity_and_step(cairn: CairnClient) -> None:
    wid = await cairn.start("Summarised [steps=2]", auto_approve=True, max_plan_iterations=0)
    await cairn.result(wid)
    parent = await history(cairn, wid)
    converter = cairn.temporal.data_converter.payload_converter

    def summaries(hist, event_type) -> list[str]:  # type: ignore[no-untyped-def]
        return [converter.from_payload(e.user_metadata.summary, str) for e in events_of(hist, event_type)]

    assert summaries(parent, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == [
        "plan v1",
        "write report",
        "save report",
        "add to the library",
    ]
    children = summaries(parent, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    assert sorted(children) == [
        "step s1: Investigate aspect 1 of the question",
        "step s2: Investigate aspect 2 of the question",
    ]


async def test_logs_name_workflow_and_activity_and_stay_quiet_on_replay(
    temporal_client: Client,
    llm: ScriptedLLM,
    task_queue: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    llm.answer_next("not json at all", role="planner")  # Makes the workflow log one warning.
    caplog.set_level(logging.INFO)
    # No workflow cache: every workflow task replays the run, which must not repeat a log line.
    async with build_worker(
        temporal_client, task_queue, llm_config(llm), home=tmp_path, max_cached_workflows=0
    ):
        cairn = CairnClient(temporal_client, task_queue)
        wid = await cairn.start("Logged run [steps=1]", auto_approve=True, max_plan_iterations=0)
        await cairn.result(wid)
    from_workflow = [
        r for r in caplog.records if getattr(r, "temporal_workflow", {}).get("workflow_id") == wid
    ]
    malformed = [r for r in from_workflow if "malformed model output" in r.getMessage()]
    assert len(malformed) == 1
    assert malformed[0].temporal_workflow["run_id"]  # type: ignore[attr-defined]
    from_activities = [
        r.temporal_activity  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "temporal_activity", {}).get("workflow_id", "").startswith(wid)
    ]
    # plan v1, its re-ask and the report; the step's three calls (in the child workflow wid/s1) are
    # the researcher graph's model and finding nodes.
    assert len([a for a in from_activities if a["activity_type"] == LLM_CHAT]) == 3
    graph_calls = [
        a for a in from_activities if a["activity_type"] in ("researcher.model", "researcher.finding")
    ]
    assert len(graph_calls) == 3 and llm.calls() == 6
    assert all(a["workflow_run_id"] and a["activity_id"] for a in from_activities)

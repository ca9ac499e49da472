"""The plan-approve-delegate-replan-report loop against the real dev server and real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError

from client.api import CairnClient, CairnError
from common.names import LIBRARY_ADD, LLM_CHAT, REPORT_SAVE, RESEARCHER_WORKFLOW, UPDATE_EDIT_PLAN
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import SENTINEL_KEY
from tests.helpers import events_of, history, scheduled_activities, wait_for


async def test_auto_approved_run_is_all_activities_and_children(cairn: CairnClient, llm: ScriptedLLM) -> None:
    wid = await cairn.start("How do glaciers move? [steps=3]", auto_approve=True)
    result = await cairn.result(wid)

    assert result.workflow_id == wid and not result.aborted
    assert result.report.startswith("# Report: How do glaciers move?")
    # plan + review + report, and per step two researcher turns (search, then done) and its finding:
    # each one request to the server and one recorded call. An auto-approved run asks no clarifying
    # questions (nobody waits to answer them), so no call checks for any.
    assert llm.calls() == 12 and result.usage.llm_calls == 12 and llm.calls("clarifier") == 0
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    hist = await history(cairn, wid)
    # The finished run's findings join the tenant's library last (activities/library.py).
    assert scheduled_activities(hist) == [LLM_CHAT, LLM_CHAT, LLM_CHAT, REPORT_SAVE, LIBRARY_ADD]
    children = events_of(hist, EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    assert [
        c.start_child_workflow_execution_initiated_event_attributes.workflow_type.name for c in children
    ] == [RESEARCHER_WORKFLOW] * 3
    assert Path(result.report_path or "").read_text() == result.report
    status = await cairn.status(wid)
    assert status.phase == "done" and status.report_path == result.report_path
    assert [s.status for s in status.plan.steps] == ["done"] * 3  # type: ignore[union-attr]
    # The key lives on the worker only: it never enters any payload of the run or its children.
    assert SENTINEL_KEY not in json.dumps(hist.to_json_dict())
    for child in children:
        child_id = child.start_child_workflow_execution_initiated_event_attributes.workflow_id
        assert SENTINEL_KEY not in json.dumps((await history(cairn, child_id)).to_json_dict())


async def test_approve_signal_releases_the_plan_and_stale_versions_are_ignored(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    wid = await cairn.start("Why is the sky blue? [steps=2]")
    status = await wait_for(cairn, wid, "awaiting_approval")
    assert status.plan is not None and status.plan.version == 1 and len(status.plan.steps) == 2
    assert status.waiting_for == "approval of plan v1"
    assert llm.calls("finding") == 0  # Nothing runs before approval.

    await cairn.approve(wid, plan_version=7)  # Stale: logged and ignored, the run waits on.
    status = await wait_for(cairn, wid, "awaiting_approval")
    assert llm.calls("finding") == 0

    assert await cairn.approve(wid) == 1
    result = await cairn.result(wid)
    assert llm.calls("finding") == 2 and not result.aborted
    with pytest.raises(CairnError, match="not awaiting approval"):
        await cairn.approve(wid)


async def test_request_changes_makes_a_second_version(cairn: CairnClient, llm: ScriptedLLM) -> None:
    wid = await cairn.start("Compare two databases [steps=2]")
    await wait_for(cairn, wid, "awaiting_approval")
    await cairn.revise(wid, "also cover licensing")
    status = await wait_for(cairn, wid, "awaiting_approval")
    while status.plan is None or status.plan.version < 2:
        status = await wait_for(cairn, wid, "awaiting_approval")
    titles = [s.title for s in status.plan.steps]
    assert titles[-1] == "Address feedback: also cover licensing" and len(titles) == 3
    assert llm.calls("planner") == 2
    await cairn.approve(wid, plan_version=2)
    result = await cairn.result(wid)
    assert result.plan is not None and result.plan.version == 2
    assert llm.calls("finding") == 3


async def test_edit_plan_validator_rejects_then_accepts(cairn: CairnClient, llm: ScriptedLLM) -> None:
    wid = await cairn.start("What limits battery life? [steps=3]")
    status = await wait_for(cairn, wid, "awaiting_approval")
    assert status.plan is not None
    s1, s2, s3 = status.plan.steps
    handle = cairn.temporal.get_workflow_handle(wid)

    with pytest.raises(CairnError, match="stale"):
        await cairn.edit(wid, [{"title": "x"}], plan_version=5)
    with pytest.raises(CairnError, match="unknown step id nope"):
        await cairn.edit(wid, [{"id": "nope", "title": "x"}])
    with pytest.raises(CairnError, match="appears twice"):
        await cairn.edit(wid, [{"id": s1.id, "title": "a"}, {"id": s1.id, "title": "b"}])
    with pytest.raises(CairnError, match="title"):  # Caught by the client before it is sent.
        await cairn.edit(wid, [{"title": "  "}])
    # The workflow's own validator and decoder refuse what a raw client sends, too.
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(UPDATE_EDIT_PLAN, {"plan_version": 1, "steps": []})
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(UPDATE_EDIT_PLAN, {"plan_version": 1, "steps": [{"kind": "code"}]})
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(
            UPDATE_EDIT_PLAN, {"plan_version": 1, "steps": [{"title": "t", "kind": "poem"}]}
        )
    hist = await history(cairn, wid)
    # Rejected edits never entered history.
    assert not events_of(hist, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)

    # Reorder, reword, drop and add in one edit.
    plan = await cairn.edit(
        wid,
        [
            {"id": s3.id, "title": s3.title, "kind": "research"},
            {"id": s1.id, "title": "Reworded first step"},
            {"title": "A brand-new step", "kind": "research", "description": "look it up"},
        ],
    )
    assert plan.version == 2
    assert [s.id for s in plan.steps][:2] == [s3.id, s1.id]
    assert s2.id not in {s.id for s in plan.steps}
    new_step = plan.steps[2]
    assert new_step.description == "look it up" and new_step.id not in {s1.id, s2.id, s3.id}

    await cairn.approve(wid, plan_version=2)
    result = await cairn.result(wid)
    prompts = [r.messages[-1]["content"] for r in llm.requests if r.role in ("finding", "coder")]
    assert sorted(p.split("Your step: ")[1].split("\n")[0] for p in prompts) == sorted(
        [s3.title, "Reworded first step", "A brand-new step"]
    )
    assert result.plan is not None and result.plan.version == 2


async def test_abort_mid_run_writes_a_partial_report_and_completes(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    # The first step answers at once; the rest hang long enough to be caught mid-flight.
    llm.answer_next(json.dumps({"summary": "Quick finding.", "claims": []}), role="finding")
    llm.answer_next("too late", role="finding", times=3, delay=30)
    wid = await cairn.start("A slow question [steps=4]", auto_approve=True, max_parallel_steps=2)
    await wait_for(cairn, wid, "researching")
    while llm.calls("finding") < 3:
        await wait_for(cairn, wid, "researching")
    await cairn.abort(wid, "the person changed their mind")
    result = await cairn.result(wid)

    assert result.aborted and result.abort_reason == "the person changed their mind"
    assert result.report.startswith("# Partial report (aborted)")
    assert "Quick finding." in result.report and "too late" not in result.report
    status = await cairn.status(wid)
    assert status.phase == "aborted"
    assert status.plan is not None and {s.status for s in status.plan.steps} == {"done", "skipped"}
    assert await cairn.describe_status(wid) == WorkflowExecutionStatus.COMPLETED
    assert llm.calls("reporter") == 0 and llm.calls("reviewer") == 0  # No new work after abort.


@pytest.mark.parametrize("policy", ["abort", "approve"])
async def test_approval_timeout_follows_its_policy(cairn: CairnClient, llm: ScriptedLLM, policy: str) -> None:
    wid = await cairn.start(
        "Timed question [steps=1]", approval_timeout_seconds=1.5, on_approval_timeout=policy
    )
    result = await cairn.result(wid)
    hist = await history(cairn, wid)
    timers = events_of(hist, EventType.EVENT_TYPE_TIMER_STARTED)
    assert len(timers) == 1  # A durable timer in history, not a sleep in a process.
    if policy == "abort":
        assert result.aborted and "not approved within 1.5 seconds" in (result.abort_reason or "")
        assert llm.calls("finding") == 0
    else:
        assert not result.aborted and llm.calls("finding") == 1

"""Clarifying questions before planning, against the real dev server, worker and scripted LLM: the planner
asks when the question is ambiguous (a structured-output call of its own schema), the run waits in phase
`clarifying` for `answer_clarification` (whose validator refuses an empty or late answer before it enters
history), the answer shapes the plan and the report's Method section, and an unanswered wait follows
the approval timeout's policy. Through the API and the CLI too."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError

from client.api import CairnClient, CairnError
from common.names import UPDATE_ANSWER_CLARIFICATION
from testkit.scripted_llm import ScriptedLLM
from tests.api_support import ApiStack, stack_fixture
from tests.conftest import CAIRN
from tests.helpers import events_of, history, run

AMBIGUOUS = "Which battery is best? [ambiguous] [steps=1]"


async def wait_phase(cairn: CairnClient, wid: str, phase: str, seconds: float = 30) -> None:
    for _ in range(int(seconds * 10)):
        if (await cairn.status(wid)).phase == phase:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{wid} never reached {phase}; it is {(await cairn.status(wid)).phase}")


async def test_an_ambiguous_question_waits_for_an_answer_that_shapes_the_plan_and_report(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    wid = await cairn.start(AMBIGUOUS, max_plan_iterations=0)
    await wait_phase(cairn, wid, "clarifying")
    status = await cairn.status(wid)
    assert status.clarification is not None and status.plan is None
    assert status.clarification.questions == ["Which region do you mean?", "Over what period?"]
    assert status.waiting_for == "answers to 2 clarifying question(s)"
    # The questions came as JSON of their own schema, because the request asked for it.
    (asked,) = [r for r in llm.requests if r.role == "clarifier"]
    assert asked.form == "json_schema" and asked.schema is not None
    assert asked.schema["properties"]["questions"]["maxItems"] == 3

    with pytest.raises(CairnError, match="the answer is empty"):
        await cairn.answer(wid, "   ")
    # Past the client, straight to the workflow: its validator refuses it, and nothing enters history.
    with pytest.raises(WorkflowUpdateFailedError):
        await cairn.temporal.get_workflow_handle(wid).execute_update(
            UPDATE_ANSWER_CLARIFICATION, {"answer": " \n "}
        )
    answered = await cairn.answer(wid, "Grid storage in Europe, this decade")
    assert answered.answer == "Grid storage in Europe, this decade"
    with pytest.raises(CairnError, match="no clarifying question awaits an answer"):
        await cairn.answer(wid, "again")

    await wait_phase(cairn, wid, "awaiting_approval")
    await cairn.approve(wid)
    result = await cairn.result(wid)
    assert result.plan is not None
    assert result.plan.steps[0].title == "Focus on Grid storage in Europe, this decade"
    method = result.report.split("## Method", 1)[1]
    assert "Which region do you mean?" in method and "Over what period?" in method
    assert "The person answered: Grid storage in Europe, this decade" in method
    (planner,) = [r for r in llm.requests if r.role == "planner"]
    assert "The person's answer: Grid storage in Europe, this decade" in planner.messages[-1]["content"]

    events = await history(cairn, wid)
    accepted = events_of(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    assert len(accepted) == 1  # The refused answers never entered history.
    summaries = [
        e.user_metadata.summary.data.decode()
        for e in events_of(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    ]
    assert summaries.count('"clarifying questions"') == 1


async def test_a_clear_question_plans_at_once_and_never_asks_nothing(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    clear = await cairn.start("How do glaciers move? [steps=1]", max_plan_iterations=0)
    await wait_phase(cairn, clear, "awaiting_approval")
    assert llm.calls("clarifier") == 1  # Asked, and the planner had no question.
    await cairn.approve(clear)
    result = await cairn.result(clear)
    assert "## Method" not in result.report

    never = await cairn.start(AMBIGUOUS, auto_approve=True, max_plan_iterations=0, clarify="never")
    result = await cairn.result(never)
    assert llm.calls("clarifier") == 1 and "## Method" not in result.report
    # An auto-approved run has nobody waiting to answer: "auto" does not ask, however ambiguous.
    unattended = await cairn.start(AMBIGUOUS, auto_approve=True, max_plan_iterations=0)
    result = await cairn.result(unattended)
    assert llm.calls("clarifier") == 1 and not result.aborted and "## Method" not in result.report

    always = await cairn.start(AMBIGUOUS, auto_approve=True, max_plan_iterations=0, clarify="always")
    await wait_phase(cairn, always, "clarifying")
    asked = [r for r in llm.requests if r.role == "clarifier"][-1]
    assert asked.schema is not None and asked.schema["properties"]["questions"]["minItems"] == 1
    await cairn.abort(always, "enough")
    result = await cairn.result(always)
    assert result.aborted and "The run ended before an answer came." in result.report


@pytest.mark.parametrize("policy", ["approve", "abort"])
async def test_unanswered_questions_follow_the_approval_timeout_policy(
    cairn: CairnClient, policy: str
) -> None:
    wid = await cairn.start(
        AMBIGUOUS, max_plan_iterations=0, auto_approve=True, clarify="always", approval_timeout_seconds=1.5,
        on_approval_timeout=policy,
    )  # fmt: skip
    result = await cairn.result(wid)
    assert "No answer came within the time allowed" in result.report or policy == "abort"
    if policy == "approve":
        assert not result.aborted and result.plan is not None and result.plan.steps[0].status == "done"
    else:
        assert result.aborted and result.plan is None
        assert result.abort_reason == "the clarifying questions were not answered within 1.5 seconds"
        assert "Which region do you mean?" in result.report
    timers = events_of(await history(cairn, wid), EventType.EVENT_TYPE_TIMER_FIRED)
    assert len(timers) == 1  # A durable timer, not a clock read.


stack = stack_fixture("clarify")


async def api_phase(http: httpx.AsyncClient, run_id: str, phase: str) -> dict[str, Any]:
    for _ in range(300):
        status: dict[str, Any] = (await http.get(f"/v1/runs/{run_id}")).json()
        if status["phase"] == phase:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{run_id} never reached {phase}")


async def test_the_api_and_the_cli_take_the_answer_within_the_tenant(stack: ApiStack, tmp_path: Path) -> None:
    async with await stack.client("atlas") as http:
        started = await http.post("/v1/runs", json={"question": AMBIGUOUS})
        run_id = started.json()["id"]
        status = await api_phase(http, run_id, "clarifying")
        assert status["clarification"]["questions"] == ["Which region do you mean?", "Over what period?"]
        empty = await http.post(f"/v1/runs/{run_id}/answer", json={"answer": "  "})
        assert empty.status_code == 422 and "the answer is empty" in empty.text
    async with await stack.client("globex") as other:
        stranger = await other.post(f"/v1/runs/{run_id}/answer", json={"answer": "hijack"})
        assert stranger.status_code == 404
    async with await stack.client("atlas", "viewer") as viewer:
        assert (await viewer.post(f"/v1/runs/{run_id}/answer", json={"answer": "x"})).status_code == 403

    env = {
        **{k: v for k, v in stack.env.items() if not k.startswith(("TEMPORAL_", "CAIRN_"))},
        "CAIRN_API_URL": stack.api.url,
        "CAIRN_API_KEY": await stack.key("atlas"),
        "CAIRN_HOME": str(tmp_path),
    }
    _, out, _ = await run(CAIRN, "status", run_id, env=env)
    assert "The planner asks, before it plans:" in out and f"cairn answer {run_id}" in out
    _, out, _ = await run(CAIRN, "answer", run_id, "Phones", "--json", env=env)
    assert json.loads(out)["answer"] == "Phones"
    code, _, err = await run(CAIRN, "answer", run_id, "Phones again", env=env, check=False)
    assert code == 1 and "no clarifying question awaits an answer" in err
    async with await stack.client("atlas") as http:
        await api_phase(http, run_id, "awaiting_approval")
        await run(CAIRN, "approve", run_id, env=env)  # The plan waited for approval meanwhile.
        await stack.temporal.get_workflow_handle(run_id).result()
        report = (await http.get(f"/v1/runs/{run_id}/report")).text
    assert "The person answered: Phones" in report

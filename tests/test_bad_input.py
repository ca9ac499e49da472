"""Bad input gets a clear error and loses nothing: refused questions, malformed signals, raw starts."""

from __future__ import annotations

import json

import pytest
from temporalio.client import WorkflowFailureError

from client.api import CairnClient, CairnError
from client.embedded import temporal_binary
from common.models import MAX_QUESTION_CHARS, ResearchResult
from common.names import RESEARCH_WORKFLOW, SIGNAL_APPROVE_PLAN, SIGNAL_REQUEST_CHANGES
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLM
from tests.helpers import run, wait_for


@pytest.mark.parametrize(
    ("question", "message"),
    [
        ("", "question: the question is empty"),
        ("   \n", "the question is empty"),
        ("x" * (MAX_QUESTION_CHARS + 1), f"the limit is {MAX_QUESTION_CHARS}"),
    ],
)
async def test_bad_questions_are_refused_before_start(
    cairn: CairnClient, question: str, message: str
) -> None:
    before = len(await cairn.list(limit=1000))
    with pytest.raises(CairnError, match=message):
        await cairn.start(question)
    assert len(await cairn.list(limit=1000)) == before


async def test_bad_options_are_refused(cairn: CairnClient) -> None:
    with pytest.raises(CairnError, match="max_parallel_steps"):
        await cairn.start("ok?", max_parallel_steps=0)
    with pytest.raises(CairnError, match="on_approval_timeout"):
        await cairn.start("ok?", on_approval_timeout="explode")
    with pytest.raises(CairnError, match="colour"):
        await cairn.start("ok?", colour="blue")


async def test_malformed_signals_are_dropped_and_the_run_goes_on(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    wid = await cairn.start("Sturdy run [steps=1]")
    await wait_for(cairn, wid, "awaiting_approval")
    handle = cairn.temporal.get_workflow_handle(wid)
    await handle.signal(SIGNAL_APPROVE_PLAN, {"plan_version": "one"})
    await handle.signal(SIGNAL_APPROVE_PLAN, {"plan_version": 1, "by": "typo field"})
    await handle.signal(SIGNAL_REQUEST_CHANGES, {"plan_version": 1, "feedback": ""})
    await handle.signal(SIGNAL_APPROVE_PLAN, "not even an object")
    status = await wait_for(cairn, wid, "awaiting_approval")
    assert status.plan is not None and status.plan.version == 1 and llm.calls("planner") == 1
    await cairn.approve(wid)
    assert not (await cairn.result(wid)).aborted


async def test_temporal_cli_starts_a_run_with_the_question_alone(
    cairn: CairnClient, dev_server: DevServer, llm: ScriptedLLM
) -> None:
    """`temporal workflow start --type ResearchWorkflow --input '{"question": ...}'` is a valid start."""
    wid = "cli-started-run"
    base = [temporal_binary(), "workflow", "--address", dev_server.address]
    await run(
        *base,
        "start",
        "--type",
        RESEARCH_WORKFLOW,
        "--task-queue",
        cairn.task_queue,
        "--workflow-id",
        wid,
        "--input",
        json.dumps({"question": "Started by the temporal CLI [steps=1]"}),
    )
    await wait_for(cairn, wid, "awaiting_approval")
    _, out, _ = await run(*base, "query", "--workflow-id", wid, "--type", "status", "--output", "json")
    assert json.loads(out)["queryResult"][0]["phase"] == "awaiting_approval"
    await run(
        *base, "signal", "--workflow-id", wid, "--name", SIGNAL_APPROVE_PLAN, "--input", '{"plan_version": 1}'
    )
    result = await cairn.result(wid)
    assert isinstance(result, ResearchResult) and llm.calls("finding") == 1


async def test_an_invalid_raw_start_fails_the_run_with_the_reason(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    handle = await cairn.temporal.start_workflow(
        RESEARCH_WORKFLOW, {"question": "  "}, id="raw-empty-question", task_queue=cairn.task_queue
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "the question is empty" in str(failure.value.cause)
    assert llm.calls() == 0

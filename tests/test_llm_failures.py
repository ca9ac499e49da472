"""How provider failures surface: retried with Retry-After, failed fast, or re-asked when malformed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from client.api import CairnClient, CairnError
from common import errors
from common.config import LLMConfig
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import SENTINEL_KEY, llm_config
from tests.helpers import events_of, history, started_attempts, wait_for
from worker import build_worker


async def test_rate_limit_is_retried_after_retry_after(cairn: CairnClient, llm: ScriptedLLM) -> None:
    llm.fail_next(429, role="planner", retry_after=1)
    wid = await cairn.start("Rate limited question [steps=1]", auto_approve=True)
    result = await cairn.result(wid)
    assert not result.aborted
    assert llm.calls("planner", status=429) == 1 and llm.calls("planner", status=200) == 1
    hist = await history(cairn, wid)
    assert started_attempts(hist)[0] == 2  # The plan call succeeded on its second attempt.
    first, second = [r for r in llm.requests if r.role == "planner"][:2]
    assert first.messages == second.messages  # The same call, retried, not a new one.


async def test_server_error_is_retried(cairn: CairnClient, llm: ScriptedLLM) -> None:
    llm.fail_next(503, role="reporter", times=2, retry_after=0.2)
    result = await cairn.result(await cairn.start("Flaky reporter [steps=1]", auto_approve=True))
    assert result.report.startswith("# Report") and llm.calls("reporter") == 3


async def test_bad_credentials_fail_fast_with_a_named_cause(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path
) -> None:
    async with build_worker(temporal_client, task_queue, llm_config(llm, api_key="sk-wrong"), home=tmp_path):
        cairn = CairnClient(temporal_client, task_queue)
        started = time.monotonic()
        wid = await cairn.start("Any question", auto_approve=True)
        with pytest.raises(CairnError, match=r"planning.*401.*OPENAI_API_KEY"):
            await cairn.result(wid)
        assert time.monotonic() - started < 10
        assert llm.calls(status=401) == 1  # One attempt: retrying bad credentials cannot help.
        hist = await history(cairn, wid)
        failed = events_of(hist, EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED)
        assert len(failed) == 1
        failure = failed[0].activity_task_failed_event_attributes.failure
        assert failure.application_failure_info.type == errors.LLM_AUTH
        assert failure.application_failure_info.non_retryable
        status = await cairn.status(wid)
        assert status.phase == "failed" and "401" in (status.error or "")


async def test_malformed_plan_is_re_asked_then_accepted(cairn: CairnClient, llm: ScriptedLLM) -> None:
    llm.answer_next("Sure! Here is my plan: step one, step two.", role="planner")
    llm.answer_next('{"steps": [{"kind": "research"}]}', role="planner")
    result = await cairn.result(await cairn.start("Messy planner [steps=2]", auto_approve=True))
    planner = [r for r in llm.requests if r.role == "planner"]
    assert len(planner) == 3 and result.plan is not None and len(result.plan.steps) == 2
    # Each re-ask shows the model its own reply and what was wrong with it.
    assert "no JSON object" in planner[1].messages[-1]["content"]
    assert "steps.0.title" in planner[2].messages[-1]["content"]


async def test_persistently_malformed_plan_fails_with_a_clear_message(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    llm.answer_next("{not json", role="planner", times=3)
    wid = await cairn.start("Hopeless planner", auto_approve=True)
    with pytest.raises(CairnError, match="malformed output 3 times"):
        await cairn.result(wid)
    assert (await wait_for(cairn, wid, "failed")).error
    assert llm.calls("planner") == 3


async def test_a_failed_step_is_reported_not_hidden(cairn: CairnClient, llm: ScriptedLLM) -> None:
    llm.fail_next(400, role="researcher")
    result = await cairn.result(await cairn.start("One bad step [steps=2]", auto_approve=True))
    assert result.plan is not None
    assert sorted(s.status for s in result.plan.steps) == ["done", "failed"]
    assert "## Steps not completed" in result.report and "400" in result.report


async def test_a_failed_run_keeps_its_findings_in_a_partial_report(
    cairn: CairnClient, llm: ScriptedLLM
) -> None:
    """Nothing is lost: when the reporter's model refuses for good, the findings are saved anyway."""
    llm.fail_next(400, role="reporter")
    wid = await cairn.start("Reporter refuses [steps=2]", auto_approve=True)
    with pytest.raises(CairnError, match="while reporting"):
        await cairn.result(wid)
    status = await wait_for(cairn, wid, "failed")
    assert status.report_path is not None
    saved = Path(status.report_path).read_text()
    assert saved.startswith("# Partial report (failed): Reporter refuses")
    assert saved.count("Finding for 'Investigate aspect") == 2 and "400" in saved


async def test_each_role_uses_its_configured_model(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    config = LLMConfig.from_env(
        {
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": SENTINEL_KEY,
            "CAIRN_MODEL": "base-model",
            "CAIRN_PLANNER_MODEL": "planner-model",
            "CAIRN_REPORTER_MODEL": "reporter-model",
        }
    )
    async with build_worker(temporal_client, task_queue, config, home=tmp_path):
        cairn = CairnClient(temporal_client, task_queue)
        result = await cairn.result(await cairn.start("Models per role [steps=1]", auto_approve=True))
    assert not result.aborted
    models = {(r.role, r.model) for r in llm.requests}
    assert models == {
        ("planner", "planner-model"),
        ("reviewer", "planner-model"),
        ("researcher", "base-model"),
        ("finding", "base-model"),  # the researcher writing up its step
        ("reporter", "reporter-model"),
    }

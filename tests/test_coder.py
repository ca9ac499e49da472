"""Coding steps end to end: the coder model's program runs in the real sandbox, failures go back to the
model, and the files it made come back as artifacts linked from the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

from temporalio.client import Client

from activities.sandbox import SandboxActivities
from client.api import CairnClient
from common.names import CODER_WORKFLOW, SANDBOX_EXEC
from common.sandbox_models import SUMMARY_CHARS, Artifact, ExecResult, SkippedArtifact
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import llm_config
from tests.helpers import history, scheduled_activities
from tests.sandbox_support import sandbox_test_config
from worker import build_worker
from workflows.coder import DESCRIBE_CHARS, OUTPUT_CHARS_FOR_MODEL, describe

CODE_PLAN = json.dumps({"steps": [{"title": "Compute the squares", "kind": "code"}]})


async def _run(temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, question: str):
    sandbox = SandboxActivities(sandbox_test_config(tmp_path))
    try:
        async with build_worker(temporal_client, task_queue, llm_config(llm), home=tmp_path, sandbox=sandbox):
            cairn = CairnClient(temporal_client, task_queue)
            wid = await cairn.start(question, auto_approve=True, max_plan_iterations=0)
            result = await cairn.result(wid)
            return cairn, wid, result
    finally:
        await sandbox.close()


async def test_code_step_runs_in_the_sandbox_and_returns_artifacts(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, sandbox_image: str
) -> None:
    llm.answer_next(CODE_PLAN, role="planner")
    cairn, wid, result = await _run(temporal_client, llm, task_queue, tmp_path, "Squares?")
    child = await history(cairn, f"{wid}/s1")
    started = child.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == CODER_WORKFLOW
    assert scheduled_activities(child).count(SANDBOX_EXEC) == 1
    assert "sum of squares 1..10 = 385" in result.report  # The program really ran.
    assert result.plan is not None and result.plan.steps[0].status == "done"
    assert "## Artifacts" in result.report
    stored = {}
    for name in ("squares.csv", "squares.png"):
        line = next(line for line in result.report.splitlines() if line.startswith(f"- {name} "))
        # The report is markdown: undo its backslash escapes to get the path back.
        stored[name] = Path(re.sub(r"\\(.)", r"\1", line.rsplit(": ", 1)[1]))
        assert stored[name].stat().st_size > 0
    assert stored["squares.csv"].read_text().split()[:3] == ["square", "1", "4"]
    assert stored["squares.png"].read_bytes().startswith(b"\x89PNG")


async def test_a_failing_program_goes_back_to_the_model(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, sandbox_image: str
) -> None:
    llm.answer_next(CODE_PLAN, role="planner")
    llm.answer_next("```python\nimport sys\nprint('about to fail')\nsys.exit(3)\n```", role="coder")
    cairn, wid, result = await _run(temporal_client, llm, task_queue, tmp_path, "Squares, eventually?")
    child = await history(cairn, f"{wid}/s1")
    assert scheduled_activities(child).count(SANDBOX_EXEC) == 2
    coder = [r for r in llm.requests if r.role == "coder"]
    assert len(coder) == 3  # write, fix, summarize
    fix_prompt = coder[1].messages[-1]["content"]
    assert (
        fix_prompt.startswith("The program failed")
        and "exit code 3" in fix_prompt
        and "about to fail" in fix_prompt
    )
    assert "sum of squares 1..10 = 385" in result.report


async def test_a_hostile_program_is_contained_and_reported(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, sandbox_image: str
) -> None:
    llm.answer_next(CODE_PLAN, role="planner")
    bomb = "```python\nimport os\nwhile True:\n    os.fork()\n```"
    llm.answer_next(bomb, role="coder", times=3)
    cairn, wid, _ = await _run(temporal_client, llm, task_queue, tmp_path, "Fork?")
    child = await history(cairn, f"{wid}/s1")
    assert scheduled_activities(child).count(SANDBOX_EXEC) == 3  # first try and two fixes, all contained
    summary_prompt = [r for r in llm.requests if r.role == "coder"][-1].messages[-1]["content"]
    assert "process limit" in summary_prompt


def test_what_the_model_reads_about_a_run_is_bounded() -> None:
    """The most a run can leave (full output caps, 20 artifacts with the longest names and previews,
    20 skipped ones listed and thousands more counted) still fits DESCRIBE_CHARS, saying what it left out."""
    long_name = "/".join(["d" * 99 + "~"] * 7 + ["f" * 95 + "~.csv"])
    result = ExecResult(
        exit_code=1,
        stdout="o" * 64 * 1024,
        stderr="e" * 64 * 1024,
        error="program exited with code 1",
        artifacts=[Artifact(name=long_name, size=10, preview="p" * 2000) for _ in range(20)],
        artifacts_skipped=[SkippedArtifact(name=long_name, size=1, reason="too many artifacts")] * 20,
        artifacts_skipped_unlisted=9_980,
    )
    text = describe(result)
    assert len(text) <= DESCRIBE_CHARS
    assert len(result.summary()) <= SUMMARY_CHARS
    assert "9999 more" in text  # 19 listed but not shown, and 9,980 only counted
    assert "more artifact previews left out" in text
    assert text.count("o" * OUTPUT_CHARS_FOR_MODEL) == 1 and "e" * OUTPUT_CHARS_FOR_MODEL in text


def test_a_small_run_is_described_in_full_and_old_results_still_load() -> None:
    old = {  # as an ExecResult from before artifacts_skipped_unlisted sits in history
        "exit_code": 0,
        "stdout": "385\n",
        "duration_ms": 12,
        "artifacts": [{"name": "squares.csv", "size": 9, "preview": "square\n1\n"}],
        "artifacts_skipped": [
            {"name": f"f{i}", "size": 1, "reason": "too many artifacts"} for i in range(30)
        ],
    }
    result = ExecResult.model_validate(old)
    assert result.artifacts_skipped_unlisted == 0
    assert describe(result).startswith(
        "exit code 0 after 12 ms; artifacts: squares.csv (9 bytes); artifacts not kept: "
        "f0 (too many artifacts), f1 (too many artifacts)"
    )
    assert describe(result).endswith("\nstdout:\n385\n\nsquares.csv begins:\nsquare\n1\n")
    assert len(result.summary()) <= SUMMARY_CHARS

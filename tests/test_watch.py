"""`cairn watch ID`: live progress until the run ends, as a real subprocess against the real dev server."""

from __future__ import annotations

import asyncio
import json

from rich.console import Console

from client.api import CairnClient, RunningActivity
from client.watch import Snapshot, render
from common.models import Plan, PlanStep, RunStatus, Usage
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import CAIRN
from tests.helpers import run, wait_for


def test_the_terminal_view_has_bars_steps_activity_and_spend() -> None:
    status = RunStatus(
        phase="researching",
        question="q",
        plan=Plan(
            version=2, steps=[PlanStep(id="s1", title="One", status="done"), PlanStep(id="s2", title="Two")]
        ),
        usage=Usage(llm_calls=4, input_tokens=1000, output_tokens=200, cost_usd=0.5),
    )
    now = RunningActivity("research-x/s2", "llm.chat", "researcher: Two", attempt=2, started=True)
    console = Console(record=True, width=100, force_terminal=True)
    console.print(render("research-x", Snapshot(status=status, running=[now])))
    text = console.export_text()
    assert "Plan v2" in text and "1/2 steps" in text and "━" in text  # The progress bar.
    assert "Now: researcher: Two (attempt 2)" in text
    assert "Spend: 4 LLM calls, 1,000 input and 200 output tokens, $0.5000" in text


async def test_watch_follows_a_run_to_its_end(
    env: dict[str, str], cairn: CairnClient, llm: ScriptedLLM
) -> None:
    llm.latency = 0.6  # Slow enough that the watch sees activities in flight.
    _, out, _ = await run(
        CAIRN, "research", "Watched run [steps=2]", "--max-plan-iterations", "0", "--json", env=env
    )
    wid = json.loads(out)["workflow_id"]
    await wait_for(cairn, wid, "awaiting_approval")
    watcher = asyncio.create_task(run(CAIRN, "watch", wid, "--interval", "0.2", env=env, seconds=120))
    await asyncio.sleep(1.5)
    await cairn.approve(wid)
    code, text, _ = await watcher
    assert code == 0
    lines = text.splitlines()
    assert f"awaiting approval of plan v1: cairn approve {wid}" in lines
    assert "now: researcher: Investigate aspect 1 of the question" in lines
    assert "now: write report" in lines
    assert lines.index("step s1 done: Investigate aspect 1 of the question") < lines.index("phase: done")
    # plan, report, and per step two researcher turns and the finding
    assert "spend: 9 LLM calls" in lines[-1] or "spend: 9 LLM calls" in lines[-2]


async def test_watch_exits_non_zero_for_a_failed_run(
    env: dict[str, str], cairn: CairnClient, llm: ScriptedLLM
) -> None:
    llm.fail_next(400, role="planner")  # A bad request is not retried: the run fails.
    wid = await cairn.start("Doomed run")
    await wait_for(cairn, wid, "failed")
    code, text, _ = await run(CAIRN, "watch", wid, env=env, check=False)
    assert code == 1 and "phase: failed" in text
    code, _, err = await run(CAIRN, "watch", "no-such-run", env=env, check=False)
    assert code == 1 and "no run with id" in err

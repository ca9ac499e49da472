"""The `cairn` CLI as a person runs it: a real subprocess against the real dev server."""

from __future__ import annotations

import json
from pathlib import Path

from client.api import CairnClient
from testkit.dev_server import free_port
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import CAIRN, SENTINEL_KEY, cli_env
from tests.helpers import run, wait_for


async def test_research_wait_json_prints_the_result(env: dict[str, str]) -> None:
    _, out, _ = await run(
        CAIRN, "research", "CLI question [steps=2]", "--auto-approve", "--wait", "--json", env=env
    )
    result = json.loads(out)
    assert result["workflow_id"].startswith("research-")
    assert result["report"].startswith("# Report: CLI question")
    # plan, review, report, and three calls per research step (two turns and the finding)
    assert result["usage"]["llm_calls"] == 9 and result["aborted"] is False


async def test_approve_edit_status_report_list_by_cli(
    env: dict[str, str], cairn: CairnClient, tmp_path: Path
) -> None:
    _, out, _ = await run(CAIRN, "research", "Steered by CLI [steps=2]", "--json", env=env)
    wid = json.loads(out)["workflow_id"]
    await wait_for(cairn, wid, "awaiting_approval")
    _, text, _ = await run(CAIRN, "status", wid, env=env)
    assert "awaiting_approval" in text and f"cairn approve {wid}" in text and "Plan v1:" in text

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"steps": [{"title": "Only this step"}]}))
    _, text, _ = await run(CAIRN, "edit", wid, str(plan_file), env=env)
    assert "Plan v2" in text and "Only this step" in text
    plan_file.write_text("{broken")
    code, _, err = await run(CAIRN, "edit", wid, str(plan_file), env=env, check=False)
    assert code == 1 and "is not JSON" in err

    code, _, err = await run(CAIRN, "report", wid, env=env, check=False)
    assert code == 1 and "not written yet" in err
    _, text, _ = await run(CAIRN, "approve", wid, env=env)
    assert "Approved plan v2" in text
    await wait_for(cairn, wid, "done")
    _, report, _ = await run(CAIRN, "report", wid, env=env)
    assert report.startswith("# Report: Steered by CLI")
    _, listing, _ = await run(CAIRN, "list", "--json", env=env)
    assert wid in {r["workflow_id"] for r in json.loads(listing)}


async def test_abort_by_cli(env: dict[str, str], cairn: CairnClient) -> None:
    _, out, _ = await run(CAIRN, "research", "To be aborted", "--json", env=env)
    wid = json.loads(out)["workflow_id"]
    await wait_for(cairn, wid, "awaiting_approval")
    await run(CAIRN, "abort", wid, "--reason", "not needed", env=env)
    status = await wait_for(cairn, wid, "aborted")
    assert status.aborted_reason == "not needed"
    _, report, _ = await run(CAIRN, "report", wid, env=env)
    assert report.startswith("# Partial report (aborted)")


async def test_refusals_name_the_fix(env: dict[str, str], cairn: CairnClient) -> None:
    before = len(await cairn.list(limit=1000))
    no_llm = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}
    code, _, err = await run(CAIRN, "research", "Any question", env=no_llm, check=False)
    assert code == 1 and "OPENAI_API_KEY" in err and "OPENAI_BASE_URL" in err
    code, _, err = await run(CAIRN, "research", "   ", env=env, check=False)
    assert code == 1 and "the question is empty" in err
    code, _, err = await run(CAIRN, "status", "no-such-run", env=env, check=False)
    assert code == 1 and "no run with id no-such-run" in err
    unreachable = dict(env, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    code, _, err = await run(CAIRN, "status", "x", env=unreachable, check=False, seconds=60)
    assert code == 1 and "cannot reach Temporal" in err
    assert len(await cairn.list(limit=1000)) == before  # None of these started a run.


async def test_embedded_server_starts_on_demand_and_keeps_runs(llm: ScriptedLLM, tmp_path: Path) -> None:
    """With no Temporal configured, `research` starts the embedded server and a worker, which stay for
    the next command; `dev stop` ends them, and runs survive in the SQLite file."""
    port = free_port()
    env = cli_env(
        CAIRN_HOME=str(tmp_path / "home"),
        CAIRN_DEV_PORT=str(port),
        CAIRN_DEV_UI_PORT=str(free_port()),
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY=SENTINEL_KEY,
    )
    try:
        code, _, err = await run(CAIRN, "status", "x", env=env, check=False)
        assert code == 1 and "run `cairn dev`" in err
        _, out, err = await run(
            CAIRN,
            "research",
            "Embedded [steps=1]",
            "--auto-approve",
            "--wait",
            "--json",
            env=env,
            seconds=180,
        )
        assert "Started Cairn's embedded Temporal server" in err and "Started a Cairn worker" in err
        assert "no worker polls" not in err  # The worker it just started is found, not warned about.
        wid = json.loads(out)["workflow_id"]
        _, out, err = await run(CAIRN, "dev", "--json", env=env)
        assert "Started" not in err and json.loads(out)["address"] == f"127.0.0.1:{port}"
        _, out, _ = await run(CAIRN, "dev", "stop", "--json", env=env)
        assert json.loads(out)["stopped"] == ["worker", "server"]
        assert (tmp_path / "home" / "temporal.db").exists()
        await run(CAIRN, "dev", env=env)
        _, listing, _ = await run(CAIRN, "list", "--json", env=env)
        assert [r["status"] for r in json.loads(listing) if r["workflow_id"] == wid] == ["COMPLETED"]
    finally:
        await run(CAIRN, "dev", "stop", env=env, check=False)


async def test_research_warns_when_no_worker_polls(env: dict[str, str], cairn: CairnClient) -> None:
    unpolled = dict(env, CAIRN_TASK_QUEUE=f"{cairn.task_queue}-nobody")
    _, out, err = await run(CAIRN, "research", "Who will run this?", "--json", env=unpolled)
    assert "no worker polls task queue" in err and "python worker.py" in err
    await cairn.temporal.get_workflow_handle(json.loads(out)["workflow_id"]).terminate("test cleanup")


async def test_cairn_replay_replays_a_finished_run_and_its_steps(
    env: dict[str, str], cairn: CairnClient
) -> None:
    wid = await cairn.start("Replayed by the CLI [steps=2]", auto_approve=True, max_plan_iterations=0)
    await cairn.result(wid)
    code, out, _ = await run(CAIRN, "replay", wid, env=env)
    assert code == 0 and f"{wid} replays cleanly" in out
    assert out.count("ok   ResearcherWorkflow") == 2 and "ok   ResearchWorkflow" in out
    _, out, _ = await run(CAIRN, "replay", wid, "--json", "--no-children", env=env)
    assert [o["ok"] for o in json.loads(out)] == [True]
    code, _, err = await run(CAIRN, "replay", "no-such-run", env=env, check=False)
    assert code == 1 and "cannot fetch the history of no-such-run" in err and "Traceback" not in err

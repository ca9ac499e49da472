"""What a red team tried, class by class, against the real dev server, worker and scripted LLM: forged
payload references, inputs that overflow or do not parse, signal floods, hostile titles, foreign
clients, and aborts that must reach running steps. Each run survives with a clear error and loses
nothing. (The sandbox, fetch and ingest classes have tests of their own beside their code's.)"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import sys
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from activities.llm import translate_error
from activities.reports import report_file_name
from client.api import CairnClient, CairnError, validated_input
from client.embedded import temporal_binary
from common.models import Finding, Plan, PlanStep, Source
from common.names import RESEARCH_WORKFLOW, SIGNAL_ADD_STEP, SIGNAL_APPROVE_PLAN, UPDATE_EDIT_PLAN
from testkit.dev_server import DevServer, free_port
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import CAIRN, SENTINEL_KEY, cli_env, llm_config
from tests.helpers import events_of, history, run, wait_for
from worker import build_worker
from workflows import budget
from workflows.details import render_details
from workflows.reporting import partial_report, sources_section, unfinished_section

REFERENCE = ["--input-meta", "encoding=json/protobuf"]
REFERENCE += ["--input-meta", "messageType=temporal.api.sdk.v1.ExternalStorageReference"]


def task_failures(hist) -> list:  # type: ignore[no-untyped-def]
    return events_of(hist, EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


# -- 1. forged payload references ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "payload", "meta"),
    [
        ("made-up key", {"driverName": "cairn-files", "claimData": {"key": "ab" * 32}}, REFERENCE),
        ("path as key", {"driverName": "cairn-files", "claimData": {"key": "../../etc/passwd"}}, REFERENCE),
        ("unknown driver", {"driverName": "s3-somewhere", "claimData": {"key": "x"}}, REFERENCE),
        ("not a reference", {"driverName": 7, "claimData": [1, 2]}, REFERENCE),
        ("legacy form", {"nope": True}, ["--input-meta", "encoding=json/external-storage-reference"]),
    ],
)
async def test_a_forged_payload_reference_fails_only_its_signal(
    cairn: CairnClient, llm: ScriptedLLM, dev_server: DevServer, name: str, payload: object, meta: list[str]
) -> None:
    wid = await cairn.start(f"Forged reference: {name} [steps=1]")
    await wait_for(cairn, wid, "awaiting_approval")
    base = [temporal_binary(), "workflow", "--address", dev_server.address]
    await run(
        *base,
        "signal",
        "--workflow-id",
        wid,
        "--name",
        SIGNAL_APPROVE_PLAN,
        "--input",
        json.dumps(payload),
        *meta,
    )
    # An update carrying one is refused, and leaves nothing behind either.
    code, _, _ = await run(
        *base,
        "update",
        "execute",
        "--workflow-id",
        wid,
        "--name",
        UPDATE_EDIT_PLAN,
        "--input",
        json.dumps(payload),
        *meta,
        check=False,
    )
    assert code != 0
    status = await wait_for(cairn, wid, "awaiting_approval")  # still answers, still waiting
    assert status.plan is not None and status.plan.version == 1
    await cairn.approve(wid)
    result = await cairn.result(wid)
    assert not result.aborted and result.report.startswith("# Report")
    assert task_failures(await history(cairn, wid)) == []


async def test_a_client_with_another_store_can_still_signal(
    cairn: CairnClient, llm: ScriptedLLM, env: dict[str, str], tmp_path: Path
) -> None:
    """A 32 KB change request from a client whose CAIRN_HOME the worker cannot see: clients never
    offload, so the worker reads it inline."""
    wid = await cairn.start("Far-away client [steps=1]")
    await wait_for(cairn, wid, "awaiting_approval")
    feedback = "𝄞" * 8000  # 8,000 characters, 32,000 bytes: over the payload store's threshold
    elsewhere = {**env, "CAIRN_HOME": str(tmp_path / "elsewhere"), "CAIRN_PAYLOAD_DIR": str(tmp_path / "p2")}
    await run(CAIRN, "revise", wid, feedback, env=elsewhere)
    status = await wait_for(cairn, wid, "awaiting_approval")
    while status.plan is None or status.plan.version < 2:
        status = await wait_for(cairn, wid, "awaiting_approval")
    assert status.plan.steps[-1].title.startswith("Address feedback: 𝄞")
    assert not list((tmp_path / "p2").rglob("*"))  # the client stored nothing
    assert task_failures(await history(cairn, wid)) == []


# -- 3. inputs that overflow or do not parse --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"deadline_seconds": 1e14}, "deadline_seconds"),
        ({"approval_timeout_seconds": 1e14}, "approval_timeout_seconds"),
        ({"approval_timeout_seconds": float("inf")}, "approval_timeout_seconds"),
        ({"cost_budget_usd": float("nan")}, "cost_budget_usd"),
        ({"token_budget": 10**15}, "token_budget"),
    ],
)
def test_out_of_bounds_options_are_refused_at_the_door(options: dict[str, float], message: str) -> None:
    with pytest.raises(CairnError, match=message):
        validated_input("Fine question", **options)


def test_a_question_of_control_characters_is_empty() -> None:
    for question in ("\u0000", "\u0000\u0007 \t\n", "\x1b\x7f\x9b"):
        with pytest.raises(CairnError, match="the question is empty"):
            validated_input(question)


async def test_the_cli_refuses_an_overflowing_deadline(env: dict[str, str]) -> None:
    for flag, value in (("--deadline", "1e14"), ("--approval-timeout", "inf")):
        code, _, err = await run(CAIRN, "research", "Q?", flag, value, env=env, check=False)
        assert code == 1 and err.startswith("cairn: invalid research request") and "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "inputs", "message"),
    [
        ("no input", [], "takes exactly one input"),
        ("two inputs", [{"question": "a"}, {"question": "b"}], "takes exactly one input"),
        ("a number", [42], "invalid input"),
        ("huge timeout", [{"question": "q", "approval_timeout_seconds": 1e308}], "approval_timeout_seconds"),
        (
            "garbage carried time",
            [{"question": "q", "carried": {"plan": {"version": 1, "steps": []}, "started_at": "yesterday"}}],
            "started_at",
        ),
    ],
)
async def test_a_raw_start_with_bad_input_fails_at_once(
    cairn: CairnClient, llm: ScriptedLLM, name: str, inputs: list[object], message: str
) -> None:
    wid = f"raw-{uuid.uuid4().hex[:8]}"
    handle = await cairn.temporal.start_workflow(
        RESEARCH_WORKFLOW, args=inputs, id=wid, task_queue=cairn.task_queue
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 20)
    assert message in str(failure.value.cause)
    assert task_failures(await history(cairn, wid)) == []  # failed at once, never retried
    assert llm.calls() == 0


async def test_a_raw_start_in_an_unreadable_encoding_fails_at_once(
    cairn: CairnClient, dev_server: DevServer
) -> None:
    wid = f"raw-binary-{uuid.uuid4().hex[:8]}"
    await run(
        temporal_binary(),
        "workflow",
        "start",
        "--address",
        dev_server.address,
        "--type",
        RESEARCH_WORKFLOW,
        "--task-queue",
        cairn.task_queue,
        "--workflow-id",
        wid,
        "--input",
        "aGVsbG8=",
        "--input-base64",
        "--input-meta",
        "encoding=binary/weird",
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(cairn.temporal.get_workflow_handle(wid).result(), 20)
    assert "cannot be decoded" in str(failure.value.cause)
    assert task_failures(await history(cairn, wid)) == []


# -- 4. signal floods and history limits -------------------------------------------------------------


async def test_an_oversized_signal_is_refused_at_the_door(
    cairn: CairnClient, llm: ScriptedLLM, dev_server: DevServer
) -> None:
    """A plain Temporal client (no payload store) sending 1 MB: the server refuses it, nothing enters
    history. Cairn's own clients never offload (common/payload_store.py), so they meet the same door."""
    wid = await cairn.start("Flooded [steps=1]")
    await wait_for(cairn, wid, "awaiting_approval")
    before = len((await history(cairn, wid)).events)
    plain = await Client.connect(dev_server.address)
    with pytest.raises(RPCError, match="size exceeds limit"):
        await plain.get_workflow_handle(wid).signal(SIGNAL_ADD_STEP, {"title": "x" * 1_000_000})
    assert len((await history(cairn, wid)).events) == before


@pytest.fixture
async def small_history_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A dev server that suggests continuing as new early, as a long run's would."""
    server = DevServer(
        db_file=tmp_path_factory.mktemp("small-history") / "temporal.db",
        extra_args=["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=60"],
    ).start()
    yield server
    server.stop()


async def test_a_flood_while_awaiting_approval_hands_over_to_a_fresh_run(
    small_history_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path, payload_dir: Path
) -> None:
    from common.config import TemporalConfig
    from common.plugin import connect

    client = await connect(
        TemporalConfig.from_env({"TEMPORAL_ADDRESS": small_history_server.address}),
        env={"CAIRN_PAYLOAD_DIR": str(payload_dir)},
    )
    async with build_worker(client, task_queue, llm_config(llm), home=tmp_path):
        cairn = CairnClient(client, task_queue)
        wid = await cairn.start("Flooded while waiting [steps=1]", approval_timeout_seconds=3600)
        await wait_for(cairn, wid, "awaiting_approval")
        handle = client.get_workflow_handle(wid)
        for i in range(80):  # each dropped (the title is too long), each still an event in history
            await handle.signal(SIGNAL_ADD_STEP, {"title": f"{i} " + "y" * 400})
        status = await wait_for(cairn, wid, "awaiting_approval")
        while status.continued == 0:
            status = await wait_for(cairn, wid, "awaiting_approval")
        assert status.plan is not None and status.plan.version == 1 and len(status.plan.steps) == 1
        await cairn.approve(wid)
        result = await cairn.result(wid)
    assert not result.aborted and result.report.startswith("# Report")
    assert llm.calls("planner") == 1  # the plan was handed over, not made again


async def test_a_run_whose_history_fills_up_ends_with_its_report(
    cairn: CairnClient, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget, "HISTORY_GUARD_EVENTS", 150)
    llm.answer_next("slow", role="researcher", delay=30)  # the step is still running when history fills
    wid = await cairn.start("Filled up [steps=1]", auto_approve=True)
    await wait_for(cairn, wid, "researching")
    while llm.calls("researcher") < 1:
        await asyncio.sleep(0.1)
    handle = cairn.temporal.get_workflow_handle(wid)
    for i in range(160):
        try:
            await handle.signal(SIGNAL_ADD_STEP, {"title": f"{i} " + "z" * 400})
        except RPCError:
            break  # the run has ended: the guard stopped it
    result = await asyncio.wait_for(cairn.result(wid), 60)
    assert result.aborted and "history reached" in (result.abort_reason or "")
    assert result.report.startswith("# Partial report (aborted)")
    assert (await cairn.status(wid)).phase == "aborted"


# -- 7. hostile titles ------------------------------------------------------------------------------

HOSTILE = (
    "Title\n## Injected heading\n- fake bullet [97] <script>alert(1)</script> <img src=x onerror=alert(1)>"
)


def test_titles_from_documents_and_models_cannot_rewrite_the_report() -> None:
    sources = [
        Source(id="1", title=HOSTILE, path="/docs/x\n## y.md"),
        Source(id="2", title="", url="javascript:alert(1)"),
    ]
    plan = Plan(version=1, steps=[PlanStep(id="s1", title=HOSTILE, status="failed", error=HOSTILE)])
    finding = Finding(step_id="s1", title=HOSTILE, summary="ok")
    for text in (
        sources_section(sources),
        unfinished_section(plan),
        partial_report(HOSTILE, HOSTILE, plan, [finding]),
        render_details("wid", "awaiting_approval", plan, finding.usage, "approval of plan v1"),
    ):
        # Only escaped, inert forms remain: no tag, no citation, no heading or bullet of its own.
        assert not re.search(r"(?<!\\)<(script|img|/script)", text) and "[97]" not in text
        assert not re.search(r"^(## Injected|- fake)", text, flags=re.MULTILINE)
        assert "<javascript:" not in text and "(javascript:" not in text


# -- 8. private files and a closed HTTP API ------------------------------------------------------------


async def test_cairn_home_is_private(env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    doc = tmp_path / "note.md"
    doc.write_text("# A note\n\nSome words to index.")
    await run(CAIRN, "ingest", str(doc), env={**env, "CAIRN_HOME": str(home)})
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


async def test_a_worker_process_keeps_its_files_private(
    dev_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    home = tmp_path / "worker-home"
    env = cli_env(
        TEMPORAL_ADDRESS=dev_server.address,
        CAIRN_TASK_QUEUE=task_queue,
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY=SENTINEL_KEY,
        CAIRN_HOME=str(home),
        CAIRN_SANDBOX_POOL_SIZE="0",
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        _, out, _ = await run(
            CAIRN, "research", "Private files [steps=1]", "--auto-approve", "--wait", "--json", env=env
        )
    finally:
        worker.terminate()
        await worker.wait()
    report = Path(json.loads(out)["report_path"])
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in home.rglob("*") if p.is_dir())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in home.rglob("*") if p.is_file())


async def test_the_dev_servers_http_api_answers_no_one(tmp_path: Path) -> None:
    """Nothing of Cairn uses the dev server's HTTP API; where one is opened, it refuses every request:
    a cross-origin text/plain POST (CSRF from a web page), a foreign Host header (DNS rebinding)."""
    port = free_port()
    server = DevServer(db_file=tmp_path / "t.db", extra_args=["--http-port", str(port)]).start()
    try:
        await _refused_everywhere(port)
    finally:
        server.stop()


async def _refused_everywhere(port: int) -> None:
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Origin": "http://evil.example"}, {"Host": "evil.example"}):
            answer = await http.post(
                f"http://127.0.0.1:{port}/api/v1/namespaces/default/workflows/x/signal/abort",
                content='{"input": null}',
                headers={"Content-Type": "text/plain", **headers},
            )
            assert answer.status_code == 403 and "Host not allowed" in answer.text


# -- 11. ids and report files ------------------------------------------------------------------------


def test_report_files_of_different_runs_never_collide() -> None:
    names = {report_file_name(i) for i in ("col/x", "col_x", "col x", "col:x", "x" * 300, "x" * 301)}
    assert len(names) == 6
    assert all(len(n) <= 100 and "/" not in n for n in names)


# -- 12. credentials in provider errors -----------------------------------------------------------------


def test_a_provider_echoing_the_key_never_puts_it_in_history() -> None:
    import httpx2  # the HTTP client the openai package is built on

    request = httpx2.Request("POST", "http://llm.example/v1/chat/completions")
    body = {"error": {"message": f"Incorrect API key provided: {SENTINEL_KEY}; Bearer abcdefghijklmnopq"}}
    err = openai.AuthenticationError("401", response=httpx2.Response(401, request=request), body=body)
    failure = translate_error(err, "gpt-4o-mini", secrets=(SENTINEL_KEY,))
    assert SENTINEL_KEY not in failure.message and "abcdefghijklmnopq" not in failure.message
    assert "OPENAI_API_KEY" in failure.message and failure.non_retryable
    other = translate_error(err, "gpt-4o-mini")  # shape alone catches an sk- key
    assert SENTINEL_KEY not in other.message


# -- 14. abort reaches running steps ---------------------------------------------------------------


async def test_abort_cancels_running_steps_and_their_activities(
    cairn: CairnClient, llm: ScriptedLLM, temporal_client: Client
) -> None:
    llm.answer_next("never used", role="researcher", delay=30)  # long enough that the step cannot finish
    wid = await cairn.start("Abort while a step runs [steps=2]", auto_approve=True, max_parallel_steps=1)
    while llm.calls("researcher") < 1:
        await asyncio.sleep(0.1)
    await cairn.abort(wid, "stop now")
    result = await asyncio.wait_for(cairn.result(wid), 30)
    assert result.aborted and result.report.startswith("# Partial report (aborted)")

    parent = await history(cairn, wid)
    cancels = events_of(parent, EventType.EVENT_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
    started = events_of(parent, EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED)
    assert len(started) == 1 and len(cancels) == 1  # the running step; the pending one never started
    assert len(events_of(parent, EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED)) == 1
    child = await history(cairn, f"{wid}/s1")
    assert events_of(child, EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
    assert child.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    status = await cairn.status(wid)
    assert status.plan is not None and {s.status for s in status.plan.steps} == {"skipped"}

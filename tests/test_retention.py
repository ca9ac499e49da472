"""The retention sweep: a Temporal Schedule starts RetentionWorkflow, which deletes the payloads, archive,
report and artifacts of a tenant's closed runs past its retention, never a payload a paused run still
references (even one it shares with a swept run), nothing of a tenant whose retention has not passed,
and says what it deleted. And the namespace's history retention is set to match.

Real components: the session's Temporal dev server, a worker, the scripted LLM, `cairn serve` and the
stack's files (tests/api_support.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import ScheduleOverlapPolicy

from activities.corpus import SQLiteCorpus
from activities.reports import report_file_name
from client.retention import ensure_retention_schedule, schedule_id, set_history_retention
from common.payload_upkeep import referenced
from common.retention_models import SweepResult
from common.web_config import SearchConfig
from tests.api_support import ApiStack, stack_fixture
from tests.test_api import wait_phase
from tests.test_living import DOC_A, QUERY, report_of, upload

# Five steps of 3,900 characters: a plan above the payload store's threshold, stored as a payload.
BIG_PLAN = [{"title": f"Step {i}", "description": f"{i} " + "a long description " * 200} for i in range(5)]
BRIEF = 1e-7  # days: every closed run of tenant "brief" is past it a moment after it closes


stack = stack_fixture(
    "retention",
    worker_options={
        "search": SearchConfig(),
        "retention_days": lambda tenant: BRIEF if tenant == "brief" else 30.0,
    },
)


async def stored_keys(stack: ApiStack, run_id: str) -> set[str]:
    """The stored payloads the run's history and its steps' histories refer to."""
    keys: set[str] = set()
    async for w in stack.temporal.list_workflows(f"WorkflowId STARTS_WITH '{run_id}'"):
        history = await stack.temporal.get_workflow_handle(w.id, run_id=w.run_id).fetch_history()
        keys |= {key for _, key in referenced(history.events)}
    return keys


def payload_file(stack: ApiStack, tenant: str, key: str) -> Path:
    return Path(stack.env["CAIRN_PAYLOAD_DIR"], "tenants", tenant, key[:2], key)


async def test_the_sweep_deletes_closed_runs_leftovers_and_keeps_what_a_paused_run_needs(
    stack: ApiStack,
) -> None:
    async with await stack.client("brief") as brief, await stack.client("lasting") as lasting:
        await upload(brief, "kerr-a.md", DOC_A)
        closed = (
            await brief.post("/v1/runs", json={"question": f"Brief closed? [steps=1] [query={QUERY}]"})
        ).json()["id"]
        paused = (await brief.post("/v1/runs", json={"question": "Brief paused? [steps=1]"})).json()["id"]
        for run_id in (closed, paused):  # The same big plan in both: one payload, stored once, shared.
            await wait_phase(brief, run_id, "awaiting_approval")
            edited = await brief.put(f"/v1/runs/{run_id}/plan", json={"plan_version": 1, "steps": BIG_PLAN})
            assert edited.status_code == 200, edited.text
        await brief.post(f"/v1/runs/{closed}/approve", json={})
        await report_of(brief, closed)
        kept = (
            await lasting.post("/v1/runs", json={"question": "Lasting? [steps=1]", "auto_approve": True})
        ).json()["id"]
        await report_of(lasting, kept)

    # What the closed run left: its report, its payloads, and (as fetch_url files pages; this stack has
    # no web to read) an archive page.
    corpus = SQLiteCorpus(stack.home / "corpus.sqlite3")
    await corpus.ingest(
        "https://example.org/kerr", "Kerr page", "A page the run read in full.", scope=f"run:{closed}"
    )
    report = stack.home / "reports" / "tenants" / "brief" / report_file_name(closed)
    lasting_report = stack.home / "reports" / "tenants" / "lasting" / report_file_name(kept)
    assert report.is_file() and lasting_report.is_file()
    closed_keys, paused_keys = await stored_keys(stack, closed), await stored_keys(stack, paused)
    shared = closed_keys & paused_keys
    only_closed = closed_keys - paused_keys
    assert shared and only_closed, (closed_keys, paused_keys)
    assert all(payload_file(stack, "brief", k).is_file() for k in closed_keys | paused_keys)
    report_size = report.stat().st_size
    # Every payload of the tenant no open run refers to goes: the closed run's, and answers to status
    # queries and event reads (stored, but in no history).
    partition = Path(stack.env["CAIRN_PAYLOAD_DIR"], "tenants", "brief")
    before = {p.name for p in partition.rglob("*") if p.is_file()}
    assert closed_keys | paused_keys <= before
    doomed_bytes = sum(payload_file(stack, "brief", k).stat().st_size for k in before - paused_keys)
    lasting_files = sorted(Path(stack.env["CAIRN_PAYLOAD_DIR"], "tenants", "lasting").rglob("*"))
    await asyncio.sleep(1.0)  # Everything of tenant "brief" is now past its retention.

    handle = await ensure_retention_schedule(stack.temporal, stack.task_queue)
    described = await handle.describe()
    assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert (await ensure_retention_schedule(stack.temporal, stack.task_queue)).id == handle.id  # Idempotent.
    await handle.trigger()
    sid = schedule_id(stack.task_queue)
    sweep_id = None
    for _ in range(300):
        done = [w.id async for w in stack.temporal.list_workflows(f"TemporalScheduledById = '{sid}'")]
        if done:
            sweep_id = done[0]
            break
        await asyncio.sleep(0.1)
    assert sweep_id is not None
    result = await stack.temporal.get_workflow_handle(sweep_id, result_type=SweepResult).result()
    swept = {t.tenant: t for t in result.tenants}

    b = swept["brief"]
    assert b.retention_days == BRIEF and b.runs == 1 and b.archives == 1
    assert b.reports == 1 and b.report_bytes == report_size
    assert b.payloads == len(before - paused_keys) and b.payload_bytes == doomed_bytes
    assert b.kept_payloads == len(paused_keys) and result.deleted_bytes == report_size + doomed_bytes
    assert not report.exists() and await corpus.documents(f"run:{closed}") == 0
    assert not any(payload_file(stack, "brief", k).exists() for k in only_closed)
    # The paused run's payloads, the one it shares with the swept run too, are all still there...
    assert {p.name for p in partition.rglob("*") if p.is_file()} == paused_keys
    # ...and nothing of a tenant whose retention has not passed was touched.
    assert swept["lasting"].runs == 0 and swept["lasting"].payloads == 0 and lasting_report.is_file()
    assert sorted(Path(stack.env["CAIRN_PAYLOAD_DIR"], "tenants", "lasting").rglob("*")) == lasting_files
    await corpus.close()

    # The paused run goes on from where it waited, and finishes.
    async with await stack.client("brief") as brief:
        await brief.post(f"/v1/runs/{paused}/approve", json={})
        assert "# Report" in await report_of(brief, paused)
    await handle.delete()


async def test_the_namespace_keeps_histories_as_long_as_the_files(stack: ApiStack) -> None:
    service, namespace = stack.temporal.workflow_service, stack.temporal.namespace
    before = (await service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))).config
    try:
        await set_history_retention(stack.temporal, 45)
        after = (await service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))).config
        assert after.workflow_execution_retention_ttl.ToTimedelta() == timedelta(days=45)
    finally:
        await set_history_retention(
            stack.temporal, before.workflow_execution_retention_ttl.ToTimedelta().days
        )

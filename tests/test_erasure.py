"""Erasing a tenant: `DELETE /v1/tenant` and `cairn tenant purge` leave nothing of it anywhere, in
Temporal (histories, visibility, schedules), the databases (corpus, keys, sessions, ledger) or on disk
(payloads, reports), and touch nothing of another tenant.

Real components: the session's Temporal dev server, a worker, the scripted LLM and `cairn serve`
(tests/api_support.py) with SQLite databases and the files in the stack's CAIRN_HOME.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from client.purge import executions_query
from client.server.db import API_DB_FILE
from common.web_config import SearchConfig
from tests.api_support import ApiStack, stack_fixture
from tests.conftest import CAIRN, cli_env
from tests.helpers import run
from tests.test_api import problem, wait_phase
from tests.test_living import DOC_A, QUERY, report_of, upload

# Eight steps of 3,900 characters: the plan an edit answers with is stored as a payload of the tenant's.
BIG_PLAN = [{"title": f"Step {i}", "description": f"{i} " + "a long description " * 200} for i in range(8)]


stack = stack_fixture("erasure", worker_options={"search": SearchConfig()})


async def populate(stack: ApiStack, http: httpx.AsyncClient, tenant: str) -> dict[str, str]:
    """A tenant with a document, a finished run (report, library), a run awaiting approval holding a
    stored payload, and a schedule."""
    await upload(http, f"{tenant}-notes.md", DOC_A)
    done = (
        await http.post(
            "/v1/runs", json={"question": f"{tenant} done? [steps=1] [query={QUERY}]", "auto_approve": True}
        )
    ).json()["id"]
    await report_of(http, done)
    waiting = (await http.post("/v1/runs", json={"question": f"{tenant} waiting? [steps=1]"})).json()["id"]
    await wait_phase(http, waiting, "awaiting_approval")
    edited = await http.put(f"/v1/runs/{waiting}/plan", json={"plan_version": 1, "steps": BIG_PLAN})
    assert edited.status_code == 200, edited.text
    schedule = (
        await http.post("/v1/schedules", json={"question": f"{tenant} weekly?", "cron": "0 8 * * 1"})
    ).json()["id"]
    return {"done": done, "waiting": waiting, "schedule": schedule}


def traces(stack: ApiStack, tenant: str) -> dict[str, int]:
    """Everything of `tenant` in the stack's databases and on its disk, counted where it lives."""
    found: dict[str, int] = {}
    corpus = sqlite3.connect(stack.home / "corpus.sqlite3")
    for table in ("documents", "passages", "scopes"):
        found[f"corpus.{table}"] = corpus.execute(
            f"SELECT count(*) FROM {table} WHERE scope LIKE ?", (f"%{tenant}%",)
        ).fetchone()[0]
    corpus.close()
    api = sqlite3.connect(stack.home / API_DB_FILE)
    for table in ("cairn_api_keys", "cairn_web_sessions", "cairn_usage"):
        try:
            found[table] = api.execute(
                f"SELECT count(*) FROM {table} WHERE tenant = ?", (tenant,)
            ).fetchone()[0]
        except sqlite3.OperationalError:  # Not made yet: nothing of anyone's.
            found[table] = 0
    api.close()
    roots = [stack.home, Path(stack.env["CAIRN_PAYLOAD_DIR"])]
    found["files"] = sum(
        1 for root in roots for p in root.rglob("*") if f"/{tenant}/" in f"{p}/" or tenant in p.name
    )
    return found


async def in_temporal(stack: ApiStack, tenant: str) -> tuple[list[str], list[str]]:
    executions = [w.id async for w in stack.temporal.list_workflows(executions_query(tenant))]
    schedules = [s.id async for s in await stack.temporal.list_schedules(f"CairnTenant = '{tenant}'")]
    return executions, schedules


async def test_purging_a_tenant_leaves_nothing_of_it_and_everything_of_others(stack: ApiStack) -> None:
    async with (
        await stack.client("doomed", "admin") as admin,
        await stack.client("doomed") as member,
        await stack.client("bystander") as other,
    ):
        mine = await populate(stack, member, "doomed")
        theirs = await populate(stack, other, "bystander")
        before = traces(stack, "doomed")
        # Everything is there to be erased: the corpus (documents, library), keys, files
        # (the report, the payload under tenants/doomed).
        assert before["corpus.documents"] >= 2 and before["cairn_api_keys"] == 2
        assert before["files"] >= 2, before
        assert list(Path(stack.env["CAIRN_PAYLOAD_DIR"], "tenants", "doomed").rglob("*"))
        executions, schedules = await in_temporal(stack, "doomed")
        assert {mine["done"], mine["waiting"], f"{mine['done']}/s1"} <= set(executions)
        assert schedules == [mine["schedule"]]
        others_before = traces(stack, "bystander")

        problem(await member.delete("/v1/tenant", params={"confirm": "doomed"}), 403)
        problem(await admin.delete("/v1/tenant"), 422)
        problem(await admin.delete("/v1/tenant", params={"confirm": "bystander"}), 422)
        # Temporal removes deleted executions from visibility in its own time (about 20 s on the dev
        # server), and the purge answers only once none is listed.
        response = await admin.delete("/v1/tenant", params={"confirm": "doomed"}, timeout=240)
        assert response.status_code == 200, response.text
        erased = response.json()
        assert erased["tenant"] == "doomed" and erased["schedules"] == 1 and erased["runs_terminated"] == 1
        assert erased["executions_deleted"] == len(executions) and erased["keys"] == 2
        assert erased["payloads"] >= 1 and erased["payload_bytes"] > 30_000 and erased["files"] >= 1

        # Nothing of it remains: histories and visibility, schedules, rows, files. Its key is gone.
        assert await in_temporal(stack, "doomed") == ([], [])
        for run_id in (mine["done"], mine["waiting"]):
            with pytest.raises(Exception, match="not found"):
                await stack.temporal.get_workflow_handle(run_id).describe()
        assert all(count == 0 for count in traces(stack, "doomed").values()), traces(stack, "doomed")
        problem(await admin.get("/v1/runs"), 401)

        # The other tenant lost nothing: its runs, schedule, rows and files are all there.
        assert traces(stack, "bystander") == others_before
        assert (await other.get(f"/v1/runs/{theirs['done']}")).json()["phase"] == "done"
        assert (await other.get(f"/v1/runs/{theirs['waiting']}")).json()["phase"] == "awaiting_approval"
        assert (await other.get(f"/v1/schedules/{theirs['schedule']}")).status_code == 200
        await other.post(f"/v1/runs/{theirs['waiting']}/abort", json={})


async def test_an_operator_purges_with_the_cli(stack: ApiStack) -> None:
    async with await stack.client("gone-cli") as http:
        mine = await populate(stack, http, "gone-cli")
    env = cli_env(**{k: v for k, v in stack.env.items() if k.startswith(("TEMPORAL_", "CAIRN_"))})
    code, _, err = await run(CAIRN, "tenant", "purge", "gone-cli", env=env, check=False)
    assert code == 1 and "--yes" in err
    assert (await in_temporal(stack, "gone-cli"))[0]  # Nothing happened without --yes.
    code, _, err = await run(CAIRN, "tenant", "purge", "default", "--yes", env=env, check=False)
    assert code == 1 and "the default tenant cannot be purged" in err
    _, out, _ = await run(CAIRN, "tenant", "purge", "gone-cli", "--yes", "--json", env=env, seconds=240)
    assert json.loads(out)["schedules"] == 1 and json.loads(out)["runs_terminated"] == 1
    assert await in_temporal(stack, "gone-cli") == ([], [])
    assert all(count == 0 for count in traces(stack, "gone-cli").values()), traces(stack, "gone-cli")
    assert mine["done"].startswith("gone-cli.")

"""Living research over real HTTP: schedules on Temporal Schedules (trigger, pause, unpause, backfill,
overlap skip, delete) with each tenant's schedules invisible to others, a scheduled run's report
ending with what changed since the schedule's previous run, and follow-ups whose planner sees the
earlier run's findings.

Everything is real: the session's Temporal dev server, a worker, the scripted LLM, `cairn serve` as its
own process, the tenant's documents in the API's corpus (tests/api_support.py). The difference between
two runs is put there as a person would: a document uploaded between them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from temporalio.client import Client

from client.api import CairnClient
from common.names import RUNS_PREDECESSOR
from common.web_config import SearchConfig
from tests.api_support import ApiStack, stack_fixture
from tests.conftest import CAIRN
from tests.helpers import run, wait_for
from tests.test_api import problem, wait_phase

# No web search: the researcher searches the tenant's documents (corpus_search is what it is offered).
QUERY = "kerr glacier moraine"
DOC_A = "# Kerr ridge survey\n\nThe kerr glacier moraine advanced twelve metres in the spring survey.\n"
DOC_B = "# Kerr ridge resurvey\n\nA second kerr glacier moraine survey found the ridge retreating.\n"
DOC_ADVANCING = "# Kerr moraine advancing\n\nThe kerr glacier moraine advanced twelve metres in the spring.\n"
DOC_RETREATING = "# Kerr moraine retreating\n\nA second kerr glacier moraine survey found it retreating.\n"


stack = stack_fixture("living", worker_options={"search": SearchConfig()})


async def upload(http: httpx.AsyncClient, name: str, text: str) -> None:
    response = await http.post("/v1/documents", files={"file": (name, text.encode())})
    assert response.status_code == 201, response.text


async def create(http: httpx.AsyncClient, question: str, **options: Any) -> dict[str, Any]:
    body = {"question": question, "cron": "0 0 1 1 *", **options}
    response = await http.post("/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    view: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/schedules/{view['id']}"
    return view


async def eventually(
    http: httpx.AsyncClient, schedule_id: str, check: Any, seconds: float = 60
) -> dict[str, Any]:
    """The schedule's description once `check` holds of it."""
    deadline = asyncio.get_running_loop().time() + seconds
    view: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        view = (await http.get(f"/v1/schedules/{schedule_id}")).json()
        if check(view):
            return view
        await asyncio.sleep(0.2)
    raise AssertionError(f"schedule {schedule_id} never got there: {view}")


async def completed_runs(temporal: Client, schedule_id: str) -> list[str]:
    query = f"TemporalScheduledById = '{schedule_id}' AND ExecutionStatus = 'Completed'"
    return [w.id async for w in temporal.list_workflows(query)]


async def report_of(http: httpx.AsyncClient, run_id: str) -> str:
    await wait_phase(http, run_id, "done", seconds=60)
    response = await http.get(f"/v1/runs/{run_id}/report")
    assert response.status_code == 200, response.text
    return response.text


def planner_text(stack: ApiStack, marker: str) -> str:
    """Everything the planner was sent in the requests whose question carries `marker`."""
    return "\n".join(
        str(m.get("content"))
        for r in stack.llm.requests
        if r.role == "planner" and marker in json.dumps(r.messages)
        for m in r.messages
    )


async def activity_types(temporal: Client, run_id: str) -> list[str]:
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


async def test_a_schedule_triggered_twice_reports_what_changed_since_its_last_run(stack: ApiStack) -> None:
    question = f"What is new at the Kerr ridge? [steps=1] [query={QUERY}]"
    async with await stack.client("tundra") as http:
        await upload(http, "kerr-a.md", DOC_A)
        view = await create(http, question, auto_approve=True, time_zone="Europe/Oslo")
        schedule_id = view["id"]
        assert schedule_id.startswith("tundra.sched-") and view["overlap"] == "skip"
        assert view["time_zone"] == "Europe/Oslo" and view["next_runs"] and not view["paused"]
        handle = stack.temporal.get_schedule_handle(schedule_id)
        described = await handle.describe()
        assert described.schedule.spec.time_zone_name == "Europe/Oslo"
        due = described.info.next_action_times[0].astimezone(ZoneInfo("Europe/Oslo"))
        assert (due.month, due.day, due.hour, due.minute) == (1, 1, 0, 0)  # Temporal reads the cron itself.
        assert view["cron"] == "0 0 1 1 *"

        assert (await http.post(f"/v1/schedules/{schedule_id}/trigger")).status_code == 202
        first = (await eventually(http, schedule_id, lambda v: len(v["recent"]) == 1))["recent"][0]["run_id"]
        assert first.startswith(f"{schedule_id}-")
        first_report = await report_of(http, first)
        assert "upload:kerr-a.md" in first_report and "What changed since" not in first_report
        # The second run finds its predecessor through visibility: wait until that lists the first.
        for _ in range(600):
            if await completed_runs(stack.temporal, schedule_id) == [first]:
                break
            await asyncio.sleep(0.1)
        assert await completed_runs(stack.temporal, schedule_id) == [first]

        await upload(http, "kerr-b.md", DOC_B)  # What is different the second time.
        assert (await http.post(f"/v1/schedules/{schedule_id}/trigger")).status_code == 202
        view = await eventually(http, schedule_id, lambda v: len(v["recent"]) == 2)
        second = view["recent"][1]["run_id"]
        second_report = await report_of(http, second)

    closed = (await stack.temporal.get_workflow_handle(first).describe()).close_time
    assert closed is not None
    title = f"## What changed since {closed:%Y-%m-%d %H:%M} UTC\n"
    assert title in second_report, second_report
    section = second_report.split(title, 1)[1]
    assert f"Compared with run {first}" in section
    new_sources = section.split("### New sources\n\n", 1)[1].split("###", 1)[0]
    assert new_sources == "- Kerr ridge resurvey (upload:kerr-b.md)\n\n"
    new_claims = section.split("### New claims\n\n", 1)[1].split("###", 1)[0]
    assert "resurvey" in new_claims.lower() and "Kerr ridge survey (corpus)" not in new_claims
    assert "1 earlier claim was found again unchanged." in section
    assert "no longer supported" not in section
    # The fact checker was asked (one structured call) and found no contradiction in a resurvey.
    checks = [
        r for r in stack.llm.requests if r.role == "checker" and "Kerr ridge?" in json.dumps(r.messages)
    ]
    assert [r.form for r in checks] == ["json_schema"]
    assert "### Contradicted claims" not in section and "not checked" not in section
    # It found its predecessor through an activity, and its planner was shown the first run's findings.
    assert RUNS_PREDECESSOR in await activity_types(stack.temporal, second)
    assert RUNS_PREDECESSOR in await activity_types(stack.temporal, first)  # (it had none yet)
    assert "What changed since" not in first_report
    shown = planner_text(stack, "Kerr ridge?")
    assert "An earlier run" in shown and "Kerr ridge survey (corpus) bears on the step." in shown


async def test_pause_unpause_and_backfill_are_temporals_own(stack: ApiStack) -> None:
    async with await stack.client("fjord") as http:
        await upload(http, "kerr-a.md", DOC_A)
        # Monthly at midnight on the 1st: it never falls due while the test runs.
        view = await create(
            http, f"Fjord backfill? [steps=1] [query={QUERY}]", auto_approve=True, cron="0 0 1 * *"
        )
        schedule_id = view["id"]
        handle = stack.temporal.get_schedule_handle(schedule_id)

        paused = await http.post(f"/v1/schedules/{schedule_id}/pause", json={"note": "holiday"})
        assert paused.status_code == 200 and paused.json()["paused"] is True
        state = (await handle.describe()).schedule.state
        assert state.paused and state.note == "holiday"
        unpaused = await http.post(f"/v1/schedules/{schedule_id}/unpause", json={})
        assert unpaused.status_code == 200 and unpaused.json()["paused"] is False
        assert not (await handle.describe()).schedule.state.paused

        # Two due times in the window (1 October and 1 November), run one after the other.
        window = {"start": "2026-09-30T12:00:00Z", "end": "2026-11-02T00:00:00Z"}
        response = await http.post(f"/v1/schedules/{schedule_id}/backfill", json=window)
        assert response.status_code == 200, response.text
        for _ in range(600):
            done = await completed_runs(stack.temporal, schedule_id)
            if len(done) == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(done) == [f"{schedule_id}-2026-10-01T00:00:00Z", f"{schedule_id}-2026-11-01T00:00:00Z"]
        info = (await handle.describe()).info
        assert info.num_actions == 2 and info.num_actions_skipped_overlap == 0
        # The later one compared itself with the earlier, and found the same documents saying the same.
        later = await report_of(http, f"{schedule_id}-2026-11-01T00:00:00Z")
        assert "## What changed since" in later and "Nothing changed: the same 1 claim rests" in later

        bad = await http.post(
            f"/v1/schedules/{schedule_id}/backfill", json={**window, "end": window["start"]}
        )
        assert "end must come after" in problem(bad, 422)["detail"]
        assert (await http.delete(f"/v1/schedules/{schedule_id}")).status_code == 204
        problem(await http.get(f"/v1/schedules/{schedule_id}"), 404)
        # The runs it started stay the tenant's runs.
        assert (await http.get(f"/v1/runs/{done[0]}")).json()["phase"] == "done"


async def test_a_run_still_going_when_the_next_is_due_makes_it_skip(stack: ApiStack) -> None:
    async with await stack.client("moraine") as http:
        view = await create(http, "Overlap? [steps=1]")  # Not auto-approved: it waits for a person.
        schedule_id = view["id"]
        await http.post(f"/v1/schedules/{schedule_id}/trigger")
        running = (await eventually(http, schedule_id, lambda v: len(v["running"]) == 1))["running"][0]
        await wait_phase(http, running, "awaiting_approval")  # It waits for approval as any run does.
        await http.post(f"/v1/schedules/{schedule_id}/trigger")
        view = await eventually(http, schedule_id, lambda v: v["skipped_overlap"] == 1)
        assert view["running"] == [running] and view["runs_started"] == 1
        listed = [
            w.id async for w in stack.temporal.list_workflows(f"TemporalScheduledById = '{schedule_id}'")
        ]
        assert listed == [running]
        # The same run, approved, goes on; then the schedule may start another.
        await http.post(f"/v1/runs/{running}/approve", json={})
        await report_of(http, running)
        await http.post(f"/v1/schedules/{schedule_id}/trigger")
        view = await eventually(http, schedule_id, lambda v: v["runs_started"] == 2)
        await http.post(f"/v1/runs/{view['recent'][-1]['run_id']}/abort", json={})
        await http.delete(f"/v1/schedules/{schedule_id}")


async def test_another_tenants_schedule_is_a_schedule_that_does_not_exist(stack: ApiStack) -> None:
    async with (
        await stack.client("acme") as acme,
        await stack.client("globex") as globex,
        await stack.client("acme", "viewer") as viewer,
    ):
        schedule_id = (await create(acme, "Acme's secret schedule"))["id"]
        missing = schedule_id[:-4] + "0000"
        routes: list[tuple[str, str, Any]] = [
            ("GET", "", None),
            ("POST", "/pause", {}),
            ("POST", "/unpause", {}),
            ("POST", "/trigger", None),
            ("POST", "/backfill", {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}),
            ("DELETE", "", None),
        ]
        for method, suffix, body in routes:
            theirs = await globex.request(method, f"/v1/schedules/{schedule_id}{suffix}", json=body)
            nothing = await globex.request(method, f"/v1/schedules/{missing}{suffix}", json=body)
            assert problem(theirs, 404)["detail"] == f"no schedule with id {schedule_id}", (method, suffix)
            assert problem(nothing, 404)["detail"] == f"no schedule with id {missing}", (method, suffix)
            if method != "GET":
                refused = await viewer.request(method, f"/v1/schedules/{schedule_id}{suffix}", json=body)
                assert "viewer" in problem(refused, 403)["detail"], (method, suffix)
        assert schedule_id not in {s["id"] for s in (await globex.get("/v1/schedules")).json()["schedules"]}
        problem(await viewer.post("/v1/schedules", json={"question": "Mine?", "cron": "0 0 1 1 *"}), 403)
        # Nothing of globex's or the viewer's reached it: never paused, never run, still there.
        view = (await viewer.get(f"/v1/schedules/{schedule_id}")).json()
        assert (
            view["paused"] is False
            and view["runs_started"] == 0
            and view["question"] == "Acme's secret schedule"
        )
        assert schedule_id in {s["id"] for s in (await acme.get("/v1/schedules")).json()["schedules"]}
        # Bad input is refused with the reason, and nothing is created.
        for body, reason in (
            ({"question": "x", "cron": "not a cron"}, "Invalid schedule spec"),
            ({"question": "x", "cron": "0 0 * * *", "time_zone": "Mars/Olympus"}, "not an IANA time zone"),
            ({"question": "x", "cron": "0 0 * * *", "tenant": "globex"}, "tenant"),
            ({"question": "x", "cron": "0 0 * * *", "overlap": "sometimes"}, "overlap"),
        ):
            assert reason in problem(await acme.post("/v1/schedules", json=body), 422)["detail"], body
        assert len((await acme.get("/v1/schedules")).json()["schedules"]) == 1
        assert (await acme.delete(f"/v1/schedules/{schedule_id}")).status_code == 204


async def test_a_followup_plans_from_the_earlier_findings_and_reports_what_changed(stack: ApiStack) -> None:
    async with await stack.client("cirque") as http, await stack.client("globex") as globex:
        await upload(http, "kerr-a.md", DOC_ADVANCING)
        started = await http.post(
            "/v1/runs", json={"question": f"Kerr first look? [steps=1] [query={QUERY}]", "auto_approve": True}
        )
        earlier = started.json()["id"]
        # Following up a run that has not completed is refused; so is another tenant's run.
        assert (
            "only a completed run"
            in problem(await http.post(f"/v1/runs/{earlier}/followup", json={"question": "Too soon?"}), 409)[
                "detail"
            ]
        )
        await report_of(http, earlier)
        problem(await globex.post(f"/v1/runs/{earlier}/followup", json={"question": "Theirs?"}), 404)
        problem(await http.post(f"/v1/runs/{earlier}/followup", json={"question": "x", "follows": "a"}), 422)

        await upload(http, "kerr-b.md", DOC_RETREATING)  # says the opposite of the first
        checked = stack.llm.calls("checker")
        response = await http.post(
            f"/v1/runs/{earlier}/followup",
            json={"question": f"Kerr since then? [steps=1] [query={QUERY}]", "auto_approve": True},
        )
        assert response.status_code == 201, response.text
        later = response.json()["id"]
        assert later.startswith("cirque.") and response.headers["location"] == f"/v1/runs/{later}"
        report = await report_of(http, later)
        assert stack.llm.calls("checker") == checked + 1

        # A fact checker that cannot answer costs the follow-up that judgement, not its report.
        stack.llm.fail_next(400, role="checker")
        response = await http.post(
            f"/v1/runs/{earlier}/followup",
            json={"question": f"Kerr once more? [steps=1] [query={QUERY}]", "auto_approve": True},
        )
        unchecked = await report_of(http, response.json()["id"])

        # A budget spent by the time of the check: the report is written, the judgement not bought.
        # Its budget: what the same follow-up spent before its check (this one spends at least as
        # much: the library it searches has grown by the runs since).
        def checker_tokens() -> list[int]:
            return [r.tokens for r in stack.llm.requests if r.role == "checker" and r.status == 200]

        same = {"question": f"Kerr at its cost? [steps=1] [query={QUERY}]", "auto_approve": True}
        response = await http.post(f"/v1/runs/{earlier}/followup", json=same)
        costed = response.json()["id"]
        await report_of(http, costed)
        spent = (await http.get(f"/v1/runs/{costed}")).json()["usage"]
        before_check = spent["input_tokens"] + spent["output_tokens"] - checker_tokens()[-1]
        checks = len(checker_tokens())
        response = await http.post(
            f"/v1/runs/{earlier}/followup", json={**same, "token_budget": before_check, "on_budget": "finish"}
        )
        budgeted = await report_of(http, response.json()["id"])
        assert len(checker_tokens()) == checks

    shown = planner_text(stack, "Kerr since then?")
    assert "An earlier run" in shown and "Kerr first look?" in shown
    assert "Kerr moraine advancing (corpus) bears on the step." in shown and "upload:kerr-a.md" in shown
    assert "What changed since" in report and f"Compared with run {earlier}" in report
    assert "upload:kerr-b.md" in report.split("### New sources", 1)[1].split("###", 1)[0]
    # The difference put between the runs, a document saying the opposite, is named a contradiction,
    # and its claim is in no other list.
    contradicted = report.split(
        "### Contradicted claims (each pair judged by the model not both true)\n\n", 1
    )[1]
    assert contradicted.startswith(
        "- was: Kerr moraine advancing (corpus) bears on the step.\n"
        "  now: Kerr moraine retreating (corpus) bears on the step.\n"
        "  why: E1 and N1 say opposite things.\n"
        "  (this run's sources still state the earlier claim too)"
    ), contradicted
    assert "### New claims" not in report and "no longer supported" not in report
    assert "### Contradicted claims" not in unchecked and "### New claims" in unchecked
    assert (
        "Contradictions were not checked: the LLM server rejected the request as malformed (400)" in unchecked
    )
    assert "Contradictions were not checked: the token budget (" in budgeted
    assert f" of {before_check:,} tokens spent) was reached." in budgeted
    assert "### Contradicted claims" not in budgeted and "### New claims" in budgeted
    assert RUNS_PREDECESSOR in await activity_types(stack.temporal, later)
    assert RUNS_PREDECESSOR not in await activity_types(stack.temporal, earlier)


async def test_the_cli_manages_schedules_and_follow_ups_through_the_api(
    stack: ApiStack, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in stack.env.items() if not k.startswith(("TEMPORAL_", "CAIRN_"))},
        "CAIRN_API_URL": stack.api.url,
        "CAIRN_API_KEY": await stack.key("serac"),
        "CAIRN_HOME": str(tmp_path),
    }
    _, out, _ = await run(
        CAIRN, "schedule", "create", "Serac weekly? [steps=1]", "--cron", "0 8 * * 1", "--tz", "Europe/Paris",
        "--auto-approve", "--max-steps", "2", "--json", env=env,
    )  # fmt: skip
    created = json.loads(out)
    schedule_id = created["id"]
    assert schedule_id.startswith("serac.sched-") and created["cron"] == "0 8 * * 1"
    assert created["request"]["max_steps"] == 2 and created["auto_approve"] is True
    _, out, _ = await run(CAIRN, "schedule", "list", "--json", env=env)
    assert [s["id"] for s in json.loads(out)["schedules"]] == [schedule_id]
    _, out, _ = await run(CAIRN, "schedule", "pause", schedule_id, "--note", "on leave", env=env)
    assert "paused" in out and "on leave" in out
    assert (await stack.temporal.get_schedule_handle(schedule_id).describe()).schedule.state.paused
    await run(CAIRN, "schedule", "unpause", schedule_id, env=env)
    _, out, _ = await run(CAIRN, "schedule", "trigger", schedule_id, env=env)
    assert f"Triggered {schedule_id}" in out
    async with await stack.client("serac") as http:
        first = (await eventually(http, schedule_id, lambda v: len(v["recent"]) == 1))["recent"][0]["run_id"]
        await report_of(http, first)
    _, out, _ = await run(
        CAIRN, "followup", first, "Serac since? [steps=1]", "--auto-approve", "--json", env=env
    )
    assert json.loads(out)["follows"] == first and json.loads(out)["workflow_id"].startswith("serac.")
    code, _, err = await run(CAIRN, "schedule", "describe", "acme.sched-000000000000", env=env, check=False)
    assert code == 1 and "no schedule with id acme.sched-000000000000" in err
    code, _, err = await run(
        CAIRN, "schedule", "create", "x", "--cron", "0 0 * * *", "--tz", "Nowhere", env=env, check=False
    )
    assert code == 1 and "not an IANA time zone" in err
    await run(CAIRN, "schedule", "delete", schedule_id, env=env)
    code, _, err = await run(CAIRN, "schedule", "describe", schedule_id, env=env, check=False)
    assert code == 1 and f"no schedule with id {schedule_id}" in err


async def test_the_cli_without_the_api_is_the_default_tenant(env: dict[str, str], cairn: CairnClient) -> None:
    _, out, _ = await run(
        CAIRN, "research", "Default first? [steps=1]", "--auto-approve", "--wait", "--json", env=env
    )
    first = json.loads(out)["workflow_id"]
    _, out, _ = await run(
        CAIRN, "followup", first, "Default since? [steps=1]", "--auto-approve", "--json", env=env
    )
    later = json.loads(out)["workflow_id"]
    result = await cairn.result(later)
    assert f"Compared with run {first}" in result.report
    _, out, _ = await run(CAIRN, "library", "search", "Investigate aspect", "--json", env=env)
    assert f"finding:{first}/s1" in {p["path"] for p in json.loads(out)["passages"]}

    _, out, _ = await run(
        CAIRN, "schedule", "create", "Default weekly?", "--cron", "0 8 * * 1", "--json", env=env
    )
    schedule_id = json.loads(out)["id"]
    assert schedule_id.startswith("default.sched-")
    _, out, _ = await run(CAIRN, "schedule", "list", "--json", env=env)
    assert schedule_id in {s["id"] for s in json.loads(out)["schedules"]}
    _, out, _ = await run(CAIRN, "schedule", "backfill", schedule_id, "--start", "2026-01-01T00:00:00+00:00",
                          "--end", "2026-01-06T00:00:00+00:00", "--json", env=env)  # fmt: skip
    assert json.loads(out)["id"] == schedule_id
    handle = cairn.temporal.get_schedule_handle(schedule_id)
    for _ in range(300):  # The schedule acts on a backfill in its own time.
        if (await handle.describe()).info.num_actions == 1:  # Monday 5 January, 08:00
            break
        await asyncio.sleep(0.1)
    _, out, _ = await run(CAIRN, "schedule", "describe", schedule_id, env=env)
    assert "runs started: 1" in out and f"{schedule_id}-2026-01-05T08:00:00Z" in out
    running = f"{schedule_id}-2026-01-05T08:00:00Z"
    await wait_for(cairn, running, "awaiting_approval")
    await cairn.abort(running, "test over")
    await run(CAIRN, "schedule", "delete", schedule_id, env=env)

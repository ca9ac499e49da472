"""Scheduled runs admitted when they run (activities/admission.py): under the tenant's concurrent-run
limit and daily allowance, sharing the API's ledger, and with the domain policy the worker has then,
not the one stored when the schedule was made.

Everything is real: the session's Temporal dev server, Temporal's scheduler starting the runs, a
worker, the scripted LLM, `cairn serve` as its own process (tests/api_support.py, whose tenants file
has this module's tenants `lone` and `sparing`), the API's SQLite ledger read back as SQL.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.admission import AdmissionActivities
from client.api import CairnClient
from client.schedules import ScheduleRequest, Schedules
from client.server.db import database_of
from client.server.policy import Policies
from client.server.quotas import Quotas
from client.server.tenants import runs_query
from common import errors
from common.models import AdmitRun, Admitted, StepInput
from common.names import LLM_CHAT, REPORT_SAVE, RUNS_ADMIT, RUNS_PREDECESSOR
from common.web_config import SearchConfig
from testkit.scripted_llm import ScriptedLLM
from tests.api_support import ApiStack, stack_fixture
from tests.conftest import CAIRN, llm_config
from tests.helpers import run
from tests.test_api import problem, wait_phase
from tests.test_living import activity_types, create, eventually
from worker import build_worker

stack = stack_fixture("admission", worker_options={"search": SearchConfig()})


def planner_calls(stack: ApiStack, marker: str) -> int:
    """How many plans the planner was asked for a question carrying `marker`."""
    return sum(1 for r in stack.llm.requests if r.role == "planner" and marker in json.dumps(r.messages))


async def latest_run(http: httpx.AsyncClient, schedule_id: str, count: int) -> str:
    """The id of the schedule's `count`th run, once it has started it."""
    view = await eventually(http, schedule_id, lambda v: len(v["recent"]) >= count)
    run_id: str = view["recent"][count - 1]["run_id"]
    return run_id


async def refusal(temporal: Client, run_id: str) -> ApplicationError:
    """The ApplicationError of the activity that failed run `run_id`, checked to be runs.admit's."""
    with pytest.raises(WorkflowFailureError) as failed:
        await temporal.get_workflow_handle(run_id).result()
    research = failed.value.cause
    assert isinstance(research, ApplicationError) and research.type == errors.RESEARCH_FAILED
    assert research.message.startswith("research failed while being admitted: ")
    activity = research.cause
    assert isinstance(activity, ActivityError) and activity.activity_type == RUNS_ADMIT
    refused = activity.cause
    assert isinstance(refused, ApplicationError) and refused.non_retryable
    return refused


async def attempts(temporal: Client, run_id: str) -> list[int]:
    """The attempt each activity of the run ended on, in order."""
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    return [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


async def test_a_scheduled_run_past_the_concurrent_limit_fails_with_the_reason_and_researches_nothing(
    stack: ApiStack,
) -> None:
    cairn = CairnClient(stack.temporal, stack.task_queue)
    question = "Lone lagoon survey? [steps=1]"
    async with await stack.client("lone") as http:
        # The tenant's one slot: a run started through the API, waiting for approval.
        first = (await http.post("/v1/runs", json={"question": "Lone first look? [steps=1]"})).json()["id"]
        await wait_phase(http, first, "awaiting_approval")
        # Not auto-approved, so an admitted run holds its slot; `allow_all`, so Temporal starts every
        # trigger and only the admission can stop one.
        schedule_id = (await create(http, question, overlap="allow_all"))["id"]
        await http.post(f"/v1/schedules/{schedule_id}/trigger")
        refused = await latest_run(http, schedule_id, 1)
        status = await wait_phase(http, refused, "failed", seconds=60)
        assert status["error"].startswith("tenant lone has 1 runs going, its limit of concurrent runs")
        assert "This scheduled run did not research" in status["error"]

        cause = await refusal(stack.temporal, refused)
        assert cause.type == errors.QUOTA_EXCEEDED and "limit of concurrent runs" in cause.message
        assert await attempts(stack.temporal, refused) == [1, 1]  # runs.admit once, report.save once
        # Nothing researched: no planner call, no LLM activity, no predecessor read; only the refusal
        # and the report that says why.
        assert await activity_types(stack.temporal, refused) == [RUNS_ADMIT, REPORT_SAVE]
        assert planner_calls(stack, "Lone lagoon survey?") == 0
        assert planner_calls(stack, "Lone first look?") == 1  # (the count does see a run that planned)
        written = await cairn.status(refused)
        assert written.report_path is not None
        report = Path(written.report_path).read_text()
        assert "# Partial report (failed): Lone lagoon survey?" in report
        assert "while being admitted: tenant lone has 1 runs going" in report
        # `cairn status`, through the API, says why too.
        env = {
            **{k: v for k, v in stack.env.items() if not k.startswith(("TEMPORAL_", "CAIRN_"))},
            "CAIRN_API_URL": stack.api.url,
            "CAIRN_API_KEY": await stack.key("lone"),
        }
        _, out, _ = await run(CAIRN, "status", refused, env=env, check=False)
        assert "failed" in out and "its limit of concurrent runs" in out

        # The slot freed (visibility shows the first run closed a moment after it closes), the next
        # scheduled run is admitted and plans...
        await http.post(f"/v1/runs/{first}/abort", json={})
        await wait_phase(http, first, "aborted")
        for _ in range(300):
            if not [w async for w in stack.temporal.list_workflows(runs_query("lone", running_only=True))]:
                break
            await asyncio.sleep(0.1)
        await http.post(f"/v1/schedules/{schedule_id}/trigger")
        admitted = await latest_run(http, schedule_id, 2)
        status = await wait_phase(http, admitted, "awaiting_approval", seconds=60)
        assert status["budget"]["token_budget"] is None  # The tenant has no daily limit.
        assert (await activity_types(stack.temporal, admitted))[:2] == [RUNS_ADMIT, RUNS_PREDECESSOR]
        assert planner_calls(stack, "Lone lagoon survey?") == 1
        # ...and holds the slot: the one after it is refused, counting the admitted scheduled run.
        await http.post(f"/v1/schedules/{schedule_id}/trigger")
        third = await latest_run(http, schedule_id, 3)
        status = await wait_phase(http, third, "failed", seconds=60)
        assert status["error"].startswith("tenant lone has 1 runs going")
        assert (await refusal(stack.temporal, third)).type == errors.QUOTA_EXCEEDED
        assert planner_calls(stack, "Lone lagoon survey?") == 1
        assert (await http.get(f"/v1/runs/{admitted}")).json()["phase"] == "awaiting_approval"
        # The API counts it too.
        problem(await http.post("/v1/runs", json={"question": "Lone by hand?"}), 429)
        await http.post(f"/v1/runs/{admitted}/abort", json={})
        await http.delete(f"/v1/schedules/{schedule_id}")


async def test_a_scheduled_run_gets_a_budget_within_the_daily_allowance_reserved_in_the_apis_ledger(
    stack: ApiStack,
) -> None:
    ledger = database_of({"CAIRN_HOME": str(stack.home)})
    try:
        async with await stack.client("sparing") as http:
            # 30,000 tokens a day: the API reserves 20,000 for a run it starts...
            by_hand = await http.post("/v1/runs", json={"question": "Sparing first?", "token_budget": 20000})
            assert by_hand.status_code == 201 and by_hand.json()["token_budget"] == 20000
            # ...so a scheduled run asking for 50,000 gets the 10,000 the day has left.
            schedule_id = (
                await create(http, "Sparing scheduled? [steps=1]", token_budget=50000, overlap="allow_all")
            )["id"]
            await http.post(f"/v1/schedules/{schedule_id}/trigger")
            scheduled = await latest_run(http, schedule_id, 1)
            status = await wait_phase(http, scheduled, "awaiting_approval", seconds=60)
            assert status["budget"]["token_budget"] == 10000
            row = await ledger.fetchone(
                "SELECT tenant, reserved_tokens, settled FROM cairn_usage WHERE run_id = ?", (scheduled,)
            )
            assert row == ("sparing", 10000, 0)
            # The day is spent now, for the API...
            spent = problem(await http.post("/v1/runs", json={"question": "Sparing more?"}), 429)
            assert "used its 30,000 tokens for today" in spent["detail"]
            # ...and for the schedule's next run, refused with the same reason.
            await http.post(f"/v1/schedules/{schedule_id}/trigger")
            refused = await latest_run(http, schedule_id, 2)
            status = await wait_phase(http, refused, "failed", seconds=60)
            assert "tenant sparing has used its 30,000 tokens for today (UTC)" in status["error"]
            assert (await refusal(stack.temporal, refused)).type == errors.QUOTA_EXCEEDED
            assert await ledger.fetchone("SELECT 1 FROM cairn_usage WHERE run_id = ?", (refused,)) is None
            for run_id in (by_hand.json()["id"], scheduled):
                await http.post(f"/v1/runs/{run_id}/abort", json={})
            await http.delete(f"/v1/schedules/{schedule_id}")
    finally:
        await ledger.close()


async def test_a_scheduled_run_keeps_to_the_domain_policy_its_worker_has_when_it_runs(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    before, after = tmp_path / "before.toml", tmp_path / "after.toml"
    before.write_text('[tenants.atoll]\nblock_domains = ["old.example"]\n')
    after.write_text('[tenants.atoll]\nallow_domains = ["new.example"]\n')
    first_policies = Policies.from_env({"CAIRN_TENANTS_FILE": str(before)})
    later_policies = Policies.from_env(
        {"CAIRN_TENANTS_FILE": str(after), "CAIRN_BLOCK_DOMAINS": "ads.example"}
    )
    cairn = CairnClient(temporal_client, task_queue)
    schedules = Schedules(cairn)
    # Made under the first policy, which the schedule stores with its action.
    view = await schedules.create(
        "atoll",
        ScheduleRequest(question="Atoll reefs? [steps=1]", cron="0 0 1 1 *", auto_approve=True),
        domains=first_policies.domains_of("atoll"),
    )

    async def one_run(policies: Policies, count: int) -> tuple[str, str]:
        """Trigger the schedule with a worker of `policies`: the run's id and its Method section."""
        async with build_worker(
            temporal_client, task_queue, llm_config(llm), home=tmp_path, policies=policies
        ):
            await schedules.trigger("atoll", view.id)
            for _ in range(300):
                recent = (await schedules.describe("atoll", view.id)).recent
                if len(recent) >= count:
                    break
                await asyncio.sleep(0.1)
            run_id = recent[count - 1].run_id
            result = await cairn.result(run_id)
        return run_id, result.report.split("## Method", 1)[1].split("\n## ", 1)[0]

    _, method = await one_run(first_policies, 1)
    assert "blocked by the tenant: old.example" in method and "new.example" not in method
    # The worker is given another tenants file and deployment lists; the schedule is left as it was.
    second, method = await one_run(later_policies, 2)
    assert (
        "allowed by the tenant: new.example" in method and "blocked by the deployment: ads.example" in method
    )
    assert "old.example" not in method
    # Applied, not only reported: the run's step searched and read under the new policy.
    history = await temporal_client.get_workflow_handle(f"{second}/s1").fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (step,) = await temporal_client.data_converter.decode(started.input.payloads, [StepInput])
    assert step.domains is not None and step.domains.describe() == [
        "blocked by the deployment: ads.example",
        "allowed by the tenant: new.example",
    ]
    assert LLM_CHAT in await activity_types(temporal_client, second)
    await schedules.delete("atoll", view.id)


async def test_one_workers_admissions_take_turns_and_an_admission_tried_again_keeps_its_reserve(
    temporal_client: Client, tmp_path: Path
) -> None:
    # The activity itself, on the real dev server's visibility and a real ledger, run as Temporal
    # would run it: two runs of each of several one-slot tenants asking at the same instant, before
    # visibility could show any (a daily limit puts the ledger's reads between the count and the
    # reserve, where the other admission would slip in without the tenant's turn), and a run whose
    # admission is tried again after its reserve was written.
    tag = uuid.uuid4().hex[:6]
    duos, daily = [f"duo{n}-{tag}" for n in range(4)], f"daily-{tag}"
    policies = Policies.parse(
        {
            "tenants": {
                **{duo: {"concurrent_runs": 1, "tokens_per_day": 100000} for duo in duos},
                daily: {"concurrent_runs": 0, "tokens_per_day": 30000},
            }
        }
    )
    ledger = database_of({"CAIRN_HOME": str(tmp_path)})
    admission = AdmissionActivities(Quotas(temporal_client, ledger, policies), policies)
    try:
        outcomes = await asyncio.gather(
            *(
                ActivityEnvironment().run(admission.admit, AdmitRun(workflow_id=f"{duo}.run-{i}", tenant=duo))
                for duo in duos
                for i in (1, 2)
            ),
            return_exceptions=True,
        )
        for n, duo in enumerate(duos):
            pair = outcomes[2 * n : 2 * n + 2]
            admitted = [o for o in pair if isinstance(o, Admitted)]
            refused = [o for o in pair if isinstance(o, ApplicationError)]
            assert len(admitted) == 1 and len(refused) == 1, (duo, pair)
            assert refused[0].type == errors.QUOTA_EXCEEDED and refused[0].non_retryable
            assert f"tenant {duo} has 1 runs going" in refused[0].message

        asked = AdmitRun(workflow_id=f"{daily}.run-1", tenant=daily, token_budget=50000)
        first = await ActivityEnvironment().run(admission.admit, asked)
        again = await ActivityEnvironment().run(admission.admit, asked)
        assert first.token_budget == again.token_budget == 30000
        rows = await ledger.fetchall("SELECT reserved_tokens FROM cairn_usage WHERE tenant = ?", (daily,))
        assert rows == [(30000,)]
        # Another run of the day is refused: the whole allowance is that run's.
        with pytest.raises(ApplicationError, match="used its 30,000 tokens for today"):
            await ActivityEnvironment().run(
                admission.admit, AdmitRun(workflow_id=f"{daily}.run-2", tenant=daily)
            )
        with pytest.raises(ApplicationError, match="tenant") as bad:
            await ActivityEnvironment().run(admission.admit, AdmitRun(workflow_id="x", tenant="Not A Tenant"))
        assert bad.value.type == errors.INVALID_INPUT and bad.value.non_retryable
    finally:
        await ledger.close()

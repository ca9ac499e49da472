"""Record the committed histories that tests/test_replay.py replays: `python -m tests.record_histories`.

Only histories that are not there yet are written (`--force` rewrites them all): the old files are the
guard that changed workflow code still replays runs that are already in flight, so keep them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.common import RawValue
from temporalio.contrib.workflow_streams import WorkflowStreamClient

from client.api import CairnClient
from common.config import LLMConfig, TemporalConfig
from common.events import EVENTS_TOPIC, TERMINAL_EVENTS
from common.models import ResearchInput
from common.plugin import connect
from common.web_config import FetchConfig, SearchConfig
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite
from testkit.scripted_llm import ScriptedLLM
from tests.helpers import wait_for
from worker import build_worker

OUT = Path(__file__).parent / "histories"


async def _scenarios(cairn: CairnClient, llm: ScriptedLLM) -> dict[str, str]:
    ids: dict[str, str] = {}
    # Approval, a change request, an edit, a replan and a report: most of the loop in one history.
    wid = await cairn.start(
        "Recorded full loop [steps=2] [replan=1]", max_parallel_steps=2, workflow_id="research_full_loop"
    )
    await wait_for(cairn, wid, "awaiting_approval")
    await cairn.revise(wid, "add a comparison")
    while (await wait_for(cairn, wid, "awaiting_approval")).plan.version < 2:  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
    status = await cairn.status(wid)
    assert status.plan is not None
    await cairn.edit(wid, [{"id": s.id, "title": s.title} for s in status.plan.steps][::-1])
    await cairn.approve(wid)
    while (await wait_for(cairn, wid, "awaiting_approval", "done")).phase != "done":
        await cairn.approve(wid)
    await cairn.result(wid)
    ids["research_full_loop"] = wid

    llm.answer_next("slow", role="researcher", delay=20)
    wid = await cairn.start(
        "Recorded abort [steps=2]", auto_approve=True, max_parallel_steps=1, workflow_id="research_abort"
    )
    while llm.calls("researcher") < 1:
        await asyncio.sleep(0.1)
    await cairn.abort(wid, "recorded abort")
    await cairn.result(wid)
    ids["research_abort"] = wid

    # An abort since it cancels running steps (workflow.patched("abort-cancels-steps")): the running
    # step's child is cancelled, its model call told, and the pending one never starts.
    before = llm.calls("researcher")
    llm.answer_next("slow", role="researcher", delay=20)
    wid = await cairn.start(
        "Recorded abort of a running step [steps=2]",
        auto_approve=True,
        max_parallel_steps=1,
        workflow_id="research_abort_cancels",
    )
    while llm.calls("researcher") <= before:
        await asyncio.sleep(0.1)
    await cairn.abort(wid, "recorded abort")
    await cairn.result(wid)
    ids["research_abort_cancels"] = wid
    ids["researcher_cancelled"] = f"{wid}/s1"

    wid = await cairn.start(
        "Recorded timeout [steps=1]",
        approval_timeout_seconds=1,
        on_approval_timeout="approve",
        workflow_id="research_approval_timeout",
    )
    await cairn.result(wid)
    ids["research_approval_timeout"] = wid

    llm.fail_next(429, role="planner", retry_after=0.5)
    llm.answer_next("not json", role="planner")
    wid = await cairn.start("Recorded retries [steps=1]", auto_approve=True, workflow_id="research_retries")
    await cairn.result(wid)
    ids["research_retries"] = wid
    ids["step"] = f"{wid}/s1"

    # A follow-up (living research): it reads the run it follows (runs.predecessor), plans from its
    # findings, searches the library, ends its report with what changed, and joins the library
    # (workflow.patched("tenant-library")).
    wid = await cairn.start(
        "Recorded follow-up [steps=1]", auto_approve=True, follows=wid, workflow_id="research_followup"
    )
    await cairn.result(wid)
    ids["research_followup"] = wid

    # A follow-up with a claim its predecessor did not make: the fact checker is asked which claims
    # contradict (workflow.patched("what-changed-contradictions")).
    llm.answer_next(
        json.dumps(
            {"summary": "Recorded.", "claims": [{"text": "A claim made only now.", "sources": ["S1"]}]}
        ),
        role="finding",
    )
    wid = await cairn.start(
        "Recorded checked follow-up [steps=1]",
        auto_approve=True,
        follows=wid,
        workflow_id="research_followup_checked",
    )
    await cairn.result(wid)
    ids["research_followup_checked"] = wid

    # A coding step: a program that fails once, is fixed by the model, and runs in the real sandbox.
    llm.answer_next(json.dumps({"steps": [{"title": "Compute squares", "kind": "code"}]}), role="planner")
    llm.answer_next("```python\nraise SystemExit(2)\n```", role="coder")
    wid = await cairn.start("Recorded code step", auto_approve=True, workflow_id="research_code_step")
    await cairn.result(wid)
    ids["research_code_step"] = wid
    ids["coder"] = f"{wid}/s1"

    # The researcher agent: search, read two pages, recall, write a finding; then steering and a
    # budget pause in the parent.
    wid = await cairn.start(
        "Recorded researcher [steps=2] [recall]",
        auto_approve=True,
        max_plan_iterations=0,
        max_parallel_steps=1,
        token_budget=100,  # The plan alone spends more: the run pauses before any step.
        workflow_id="research_agent",
    )
    await wait_for(cairn, wid, "paused")
    await cairn.add_step(wid, "An added step")
    await cairn.skip_step(wid, "s2")
    await cairn.raise_budget(wid, token_budget=10_000_000)
    await cairn.result(wid)
    ids["research_agent"] = wid
    ids["researcher"] = f"{wid}/s1"

    # Clarifying questions before planning (workflow.patched("clarify-before-planning")): asked,
    # answered, and the plan and report the answer shaped.
    wid = await cairn.start(
        "Recorded clarified run [ambiguous] [steps=1]",
        auto_approve=True,
        clarify="always",
        max_plan_iterations=0,
        workflow_id="research_clarified",
    )
    await wait_for(cairn, wid, "clarifying")
    await cairn.answer(wid, "The recorded answer")
    await cairn.result(wid)
    ids["research_clarified"] = wid

    # A tenant's run watched through its event stream (the stream's long-poll updates in history) and
    # told of its step's tool calls (the tools' signals).
    wid = "acme.research_watched"
    request = ResearchInput(
        question="Recorded watched run [steps=1]", tenant="acme", auto_approve=True, max_plan_iterations=0
    )
    await cairn.start_run(request, wid)
    stream = WorkflowStreamClient.create(cairn.temporal, wid)
    async for item in stream.subscribe(
        [EVENTS_TOPIC], result_type=RawValue, poll_cooldown=timedelta(milliseconds=50)
    ):
        if json.loads(item.data.payload.data)["type"] in TERMINAL_EVENTS:
            break
    await cairn.result(wid)
    ids["research_watched"] = wid
    ids["research_scheduled"] = await _scheduled(cairn, "research_scheduled")
    return ids


async def _scheduled(cairn: CairnClient, wid: str) -> str:
    """A scheduled run (its input names its schedule, as a schedule's action does): admitted under its
    tenant's quotas and domain policy (workflow.patched("scheduled-admission")), then it looks for its
    schedule's previous run and, being the first, plans without one.

    research_scheduled_unadmitted.json is this scenario recorded under that id by the code before
    runs.admit existed (commit 149311d): a scheduled run in flight across that upgrade must replay
    without being admitted. Code of today cannot record it again; keep it."""
    request = ResearchInput(
        question="Recorded scheduled run [steps=1]",
        auto_approve=True,
        max_plan_iterations=0,
        schedule_id="default.sched-00000000005c",
    )
    await cairn.start_run(request, wid)
    await cairn.result(wid)
    return wid


def file_name(workflow_id: str) -> str:
    """Histories are named by workflow id, so replay knows the id; '/' (child ids) becomes '__'."""
    return workflow_id.replace("/", "__") + ".json"


async def main(force: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(db_file=Path(tmp) / "temporal.db").start()
        llm = ScriptedLLM().start()
        site = ResearchSite(pages=("glacier-flow.html",)).start()  # Short pages: small histories.
        try:
            # Every payload inline: a committed history must replay without this machine's payload store.
            client = await connect(
                TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}),
                env={"CAIRN_HOME": tmp, "CAIRN_PAYLOAD_THRESHOLD_BYTES": str(2**30)},
            )
            queue = f"record-{uuid.uuid4().hex[:8]}"
            config = LLMConfig(api_key="sk-recording", base_url=llm.base_url)
            async with build_worker(
                client,
                queue,
                config,
                home=Path(tmp),
                search=SearchConfig(searxng_url=site.url),
                fetch=FetchConfig(allow_private=True),
            ):
                ids = await _scenarios(CairnClient(client, queue), llm)
            OUT.mkdir(exist_ok=True)
            for wid in ids.values():
                path = OUT / file_name(wid)
                if path.exists() and not force:
                    print(f"kept {path.name} (recorded earlier; --force rewrites it)")
                    continue
                history = await client.get_workflow_handle(wid).fetch_history()
                path.write_text(json.dumps(history.to_json_dict(), indent=1) + "\n")
                print(f"recorded {wid}: {len(history.events)} events")
        finally:
            site.stop()
            llm.stop()
            server.stop()


if __name__ == "__main__":
    asyncio.run(main(force="--force" in sys.argv[1:]))

"""One LLM rate limit for all workers: LLM calls run on `<task queue>-llm`, whose dispatch rate the
Temporal server enforces across every worker polling it, and each worker caps its own calls in flight.

The rate is measured where a provider would see it, at the scripted LLM server's door, with two
workers that share nothing but the Temporal server (each has its own connection, home and identity).

How the server limits (temporalio/temporal, service/matching: matcher.go and rateLimitManager): a task
queue has 4 partitions by default; each dispatches at rate/4 per second from a token bucket holding
ceil(rate/4) (at least 1), and a task counts once, on the partition it was written to. A backlogged
task takes its token before it waits for a poller, so each partition may also hold one token-bearing
task back until a worker has a free slot. In any T seconds the queue therefore dispatches at most
rate*T + BURST + PARTITIONS calls: 4T + 8 at rate 4/s. Measured with rate 4/s and the load below: the
fullest second saw 6-7 calls, busy seconds 4, the fullest 10 s 39-41; the same load with no limit
sends 35 calls in one second. (With the queue on one partition: 7 in a second, 13 in 2 s, 45 in 10 s,
exactly rate*T + ceil(rate) + 1.)
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from client.api import CairnClient
from common.config import ConfigError, LLMLimits, TemporalConfig, worker_role
from common.names import (
    LIBRARY_ADD,
    LLM_CHAT,
    NODE_FINDING,
    NODE_MODEL,
    REPORT_SAVE,
    RESEARCHER_GRAPH,
    RESEARCHER_TOOLS,
    llm_task_queue,
)
from common.plugin import connect
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import llm_config
from tests.helpers import history
from worker import CairnWorker, build_worker

LLM_ACTIVITIES = {LLM_CHAT, f"{RESEARCHER_GRAPH}.{NODE_MODEL}", f"{RESEARCHER_GRAPH}.{NODE_FINDING}"}
OTHER_ACTIVITIES = {REPORT_SAVE, LIBRARY_ADD, *(f"{RESEARCHER_GRAPH}.{tool}" for tool in RESEARCHER_TOOLS)}

RATE = 4.0
PARTITIONS = 4  # The server's default matching.numTaskqueueReadPartitions.
BURST = PARTITIONS * max(1, math.ceil(RATE / PARTITIONS))
RUNS = 6
STEPS = 3
CALLS_PER_RUN = 1 + 3 * STEPS + 1  # plan; per step two researcher turns and the finding; report


async def two_workers(
    server: DevServer, llm: ScriptedLLM, task_queue: str, home: Path, limits: LLMLimits
) -> list[CairnWorker]:
    """Two Cairn workers on one task queue, as two processes would be. Each needs a connection of its
    own: the SDK refuses two workers for one queue on one client."""
    workers = []
    for name in ("w1", "w2"):
        (home / name).mkdir()
        client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}))
        workers.append(
            build_worker(
                client, task_queue, llm_config(llm), home=home / name, llm_limits=limits, identity=name
            )
        )
    return workers


async def run_load(
    server: DevServer, llm: ScriptedLLM, task_queue: str, home: Path, limits: LLMLimits, runs: int, steps: int
) -> tuple[CairnClient, list[str]]:
    """`runs` auto-approved runs of `steps` research steps at once, on two workers; their ids."""
    w1, w2 = await two_workers(server, llm, task_queue, home, limits)
    async with w1, w2:
        cairn = CairnClient(w1.workers[0].client, task_queue)
        ids = [
            await cairn.start(f"Load {i} [steps={steps}]", auto_approve=True, max_plan_iterations=0)
            for i in range(runs)
        ]
        results = await asyncio.gather(*(cairn.result(wid) for wid in ids))
    assert [r.usage.llm_calls for r in results] == [1 + 3 * steps + 1] * runs
    return cairn, ids


async def all_histories(cairn: CairnClient, workflow_id: str) -> list[WorkflowHistory]:
    """A run's history and those of its child workflows, recursively."""
    hist = await history(cairn, workflow_id)
    found = [hist]
    for event in hist.events:
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
            found += await all_histories(cairn, child)
    return found


def activities_of(hist: WorkflowHistory) -> list[tuple[str, str, str]]:
    """Each activity that ran: (type, task queue it was scheduled on, identity of the worker that took it)."""
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes
        for e in hist.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    ran = []
    for e in hist.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = e.activity_task_started_event_attributes
            attrs = scheduled[started.scheduled_event_id]
            ran.append((attrs.activity_type.name, attrs.task_queue.name, started.identity))
    return ran


def most_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any interval [t, t + window)."""
    times = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        best = max(best, last - first + 1)
    return best


def most_at_once(starts: list[float], duration: float) -> int:
    """The most requests in progress at once, each taking `duration` from its arrival."""
    edges = sorted([(t, 1) for t in starts] + [(t + duration, -1) for t in starts])
    now = best = 0
    for _, step in edges:  # At a tie the end (-1) sorts first: back-to-back calls do not overlap.
        now += step
        best = max(best, now)
    return best


async def test_two_workers_together_stay_under_one_rate(
    dev_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    llm.latency = 0.05  # A provider takes time to answer; still far inside 1/RATE.
    limits = LLMLimits(rate_per_second=RATE, max_concurrent=2)
    cairn, ids = await run_load(dev_server, llm, task_queue, tmp_path, limits, RUNS, STEPS)

    times = sorted(r.at for r in llm.requests)
    assert len(times) == RUNS * CALLS_PER_RUN
    # In any window, and over the whole busy period, at most the rate plus the slack the server's
    # algorithm allows (module docstring): 12 calls in a second, 48 in ten.
    for window in (1.0, 2.0, 5.0, 10.0):
        allowed = RATE * window + BURST + PARTITIONS
        assert most_in_window(times, window) <= allowed, (window, [round(t - times[0], 2) for t in times])
    busy = times[-1] - times[0]
    assert len(times) <= RATE * busy + BURST + PARTITIONS
    # The load wanted more than the rate (the control test below sees how much): the limit bound.
    assert most_in_window(times, 1.0) >= RATE

    ran = [a for wid in ids for h in await all_histories(cairn, wid) for a in activities_of(h)]
    llm_queue = llm_task_queue(task_queue)
    assert {queue for kind, queue, _ in ran if kind in LLM_ACTIVITIES} == {llm_queue}
    assert {queue for kind, queue, _ in ran if kind in OTHER_ACTIVITIES} == {task_queue}
    assert {kind for kind, _, _ in ran} <= LLM_ACTIVITIES | OTHER_ACTIVITIES
    # Both workers' LLM workers served calls, and only they did; the rest ran on the workflow workers.
    assert {who for kind, _, who in ran if kind in LLM_ACTIVITIES} == {"w1/llm", "w2/llm"}
    assert {who for kind, _, who in ran if kind in OTHER_ACTIVITIES} <= {"w1", "w2"}
    assert sum(1 for kind, _, _ in ran if kind in LLM_ACTIVITIES) == len(times)


async def test_without_a_limit_the_same_load_exceeds_it(
    dev_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    """The control: unlimited, the load above breaks the bound that test holds it to."""
    llm.latency = 0.05
    await run_load(dev_server, llm, task_queue, tmp_path, LLMLimits(max_concurrent=2), RUNS, STEPS)
    assert most_in_window([r.at for r in llm.requests], 1.0) > RATE + BURST + PARTITIONS


async def test_each_worker_caps_its_calls_in_flight(
    dev_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    llm.latency = 0.2
    await run_load(dev_server, llm, task_queue, tmp_path, LLMLimits(max_concurrent=1), runs=3, steps=2)
    # One call at a time per worker, two workers: never more than two requests open at the server.
    assert most_at_once([r.at for r in llm.requests], llm.latency) == 2


async def test_roles_choose_the_workers(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    """CAIRN_WORKER_ROLE lets a deployment scale LLM callers apart from orchestration."""

    def queues(role: str) -> list[str]:
        # A queue per role: the SDK holds each queue's registration on the client.
        built = build_worker(
            temporal_client,
            f"{task_queue}-{role}",
            llm_config(llm),
            home=tmp_path,
            llm_limits=LLMLimits(),
            role=role,
        )
        return [w.task_queue.removeprefix(task_queue) for w in built.workers]

    assert queues("all") == ["-all", "-all-llm"]
    assert queues("workflows") == ["-workflows"]
    assert queues("llm") == ["-llm-llm"]
    with pytest.raises(ValueError, match="unknown worker role 'both'"):
        queues("both")


def test_limits_and_role_come_from_the_environment() -> None:
    assert LLMLimits.from_env({}) == LLMLimits(rate_per_second=None, max_concurrent=200)
    assert (
        LLMLimits.from_env({"CAIRN_LLM_RATE_PER_SECOND": "", "CAIRN_LLM_MAX_CONCURRENT": ""}) == LLMLimits()
    )
    assert LLMLimits.from_env(
        {"CAIRN_LLM_RATE_PER_SECOND": "2.5", "CAIRN_LLM_MAX_CONCURRENT": "3"}
    ) == LLMLimits(rate_per_second=2.5, max_concurrent=3)
    for bad in ("fast", "0", "-1", "inf", "nan"):
        with pytest.raises(ConfigError, match="CAIRN_LLM_RATE_PER_SECOND"):
            LLMLimits.from_env({"CAIRN_LLM_RATE_PER_SECOND": bad})
    for bad in ("many", "0", "-2", "1.5"):
        with pytest.raises(ConfigError, match="CAIRN_LLM_MAX_CONCURRENT"):
            LLMLimits.from_env({"CAIRN_LLM_MAX_CONCURRENT": bad})
    assert worker_role({}) == "all"
    assert worker_role({"CAIRN_WORKER_ROLE": "llm"}) == "llm"
    with pytest.raises(ConfigError, match="CAIRN_WORKER_ROLE"):
        worker_role({"CAIRN_WORKER_ROLE": "everything"})

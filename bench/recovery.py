"""Time lost to a worker's death: a run with three LLM calls in flight, its worker SIGKILLed, a new
worker started at once (as a supervisor would); how much longer the run takes than the same run
undisturbed, and how soon the new worker polls.

The run: a plan, three researcher steps at once (each two model turns around a tool call, then its
finding), a report, with the scripted LLM answering each call after --latency seconds. The kill comes
--into seconds after the third step's first model call arrived, so all three are in flight. Clean and
killed runs alternate, each on the same server, worker command and LLM.
    lost = wall of a killed run - median wall of the clean runs
    python bench/recovery.py [--trials 5] [--latency 1.0] [--into 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from bench.results_io import publish
from bench.worker_process import start_worker, worker_env
from client.api import CairnClient
from common.config import TemporalConfig
from common.plugin import connect
from testkit import processes
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLMProcess

RESULTS = Path(__file__).parent / "results" / "recovery.json"
SHAPE: dict[str, Any] = {
    "auto_approve": True,
    "max_steps": 3,
    "max_parallel_steps": 3,
    "max_plan_iterations": 0,
}


async def polling(client: Client, queue: str, pid: int) -> None:
    """Return once the worker process `pid` polls `queue` (its identity starts with the pid)."""
    while True:
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
        if any(p.identity.startswith(f"{pid}@") for p in described.pollers):
            return
        await asyncio.sleep(0.02)


async def main(trials: int, latency: float, into: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(db_file=Path(tmp) / "temporal.db").start()
        llm = ScriptedLLMProcess(latency=latency).start()
        queue = f"recovery-{uuid.uuid4().hex[:8]}"
        env = worker_env(server.address, queue, tmp, llm.base_url)
        client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}), env=env)
        cairn = CairnClient(client, queue)
        worker = start_worker(env, Path(tmp) / "worker.log")
        clean: list[float] = []
        lost_runs: list[float] = []
        startups: list[float] = []
        try:
            await asyncio.wait_for(polling(client, queue, worker.pid), 60)
            await cairn.result(
                await cairn.start("Warm-up [steps=1]", auto_approve=True, max_plan_iterations=0)
            )
            for trial in range(trials):
                started = time.perf_counter()
                await cairn.result(await cairn.start(f"Clean {trial} [steps=3]", **SHAPE))
                clean.append(time.perf_counter() - started)

                before = llm.calls("researcher")
                started = time.perf_counter()
                run_id = await cairn.start(f"Killed {trial} [steps=3]", **SHAPE)
                while llm.calls("researcher") < before + 3:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(into)
                processes.kill(worker)
                spawned = time.perf_counter()
                worker = start_worker(env, Path(tmp) / "worker.log")
                await asyncio.wait_for(polling(client, queue, worker.pid), 60)
                startups.append(time.perf_counter() - spawned)
                await cairn.result(run_id)
                lost_runs.append(time.perf_counter() - started)
                print(
                    f"trial {trial + 1}: clean {clean[-1]:.2f} s, killed {lost_runs[-1]:.2f} s, "
                    f"new worker polled after {startups[-1]:.2f} s",
                    flush=True,
                )
        finally:
            processes.stop(worker, 15)
            llm.stop()
            server.stop()
    baseline = statistics.median(clean)
    lost = [w - baseline for w in lost_runs]
    publish(
        {
            "trials": trials,
            "llm_latency_s": latency,
            "clean_wall_s_median": round(baseline, 2),
            "lost_s_median": round(statistics.median(lost), 2),
            "lost_s_max": round(max(lost), 2),
            "new_worker_polls_after_s_median": round(statistics.median(startups), 2),
            "target_met": statistics.median(lost) < 4.0,
        },
        RESULTS,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--into", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.trials, args.latency, args.into))

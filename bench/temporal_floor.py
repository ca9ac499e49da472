"""Temporal's own floor on this machine: what a bare workflow pays per activity and per child workflow.

The context for bench/orchestration_overhead.py: the same dev server flags, a worker in the same
process, and workflows that do nothing but call a no-op activity (or start a child that does) N times.
What Cairn adds on top of these figures is its own overhead.
    python bench/temporal_floor.py [--iterations 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.results_io import publish
from testkit.dev_server import DevServer

RESULTS = Path(__file__).parent / "results" / "temporal_floor.json"


@activity.defn(name="bench.noop")
async def noop(value: int) -> int:
    return value


@workflow.defn(name="BenchActivityLoop")
class ActivityLoop:
    @workflow.run
    async def run(self, iterations: int) -> int:
        for i in range(iterations):
            await workflow.execute_activity(noop, i, start_to_close_timeout=timedelta(seconds=10))
        return iterations


@workflow.defn(name="BenchChild")
class Child:
    @workflow.run
    async def run(self, value: int) -> int:
        return await workflow.execute_activity(noop, value, start_to_close_timeout=timedelta(seconds=10))


@workflow.defn(name="BenchChildLoop")
class ChildLoop:
    @workflow.run
    async def run(self, iterations: int) -> int:
        for i in range(iterations):
            await workflow.execute_child_workflow(Child.run, i, id=f"{workflow.info().workflow_id}-{i}")
        return iterations


async def bench(iterations: int, repeats: int) -> dict[str, object]:
    figures: dict[str, list[float]] = {"activity": [], "child_with_activity": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(db_file=Path(tmp) / "temporal.db").start()
        try:
            client = await Client.connect(server.address)
            async with Worker(
                client,
                task_queue="floor",
                workflows=[ActivityLoop, Child, ChildLoop],
                activities=[noop],
                # These workflows live in a script, which the sandbox cannot re-import; they are trivially
                # deterministic, and without the sandbox the figure is Temporal's floor, not Python's.
                workflow_runner=UnsandboxedWorkflowRunner(),
            ):
                for name, run in (("activity", ActivityLoop.run), ("child_with_activity", ChildLoop.run)):
                    for repeat in range(repeats + 1):
                        started = time.perf_counter()
                        await client.execute_workflow(
                            run, iterations, id=f"{name}-{repeat}", task_queue="floor"
                        )
                        if repeat:  # The first one warms up.
                            figures[name].append((time.perf_counter() - started) / iterations * 1000)
        finally:
            server.stop()
    return {
        "iterations": iterations,
        "repeats": repeats,
        **{f"{k}_ms_p50": round(statistics.median(v), 1) for k, v in figures.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    report = asyncio.run(bench(args.iterations, args.repeats))
    publish(report, RESULTS)


if __name__ == "__main__":
    main()

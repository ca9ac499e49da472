"""Fair sharing under a flood: tenant B's time to its first LLM call and to its report while tenant A
floods the system, with Temporal's task-queue fairness on and off, against B alone on an idle system.

The LLM queue is the bottleneck, as a provider's concurrency is in production: each call takes
--latency seconds and a worker has --slots calls in flight. Tenant A starts --flood runs through the
API at once; a second later tenant B starts one. B's times come from its run's history: the start of
its first `llm.chat` activity, and its close. Arms (idle, fair, first-come-first-served) each get a
fresh stack (bench/api_stack.py) and are interleaved, sitting after sitting. "Off" is the same server
without `matching.enableFairness`. Target: with fairness on, B within 1.5x of idle.
    python bench/fairness.py [--sittings 3] [--flood 40] [--latency 0.5] [--slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from temporalio.api.enums.v1 import EventType

from bench.api_stack import Stack, stack
from bench.results_io import publish

RESULTS = Path(__file__).parent / "results" / "fairness.json"
SHAPE = {"auto_approve": True, "max_steps": 1, "max_plan_iterations": 0}
# The flood is one tenant's many runs: no concurrency limit here, so all of them queue at once.
TENANTS = "[defaults]\nconcurrent_runs = 0\nrequests_per_minute = 0\n"


async def times_of(built: Stack, run_id: str) -> tuple[float, float]:
    """Seconds from the run's start to its first LLM call starting, and to its close."""
    handle = built.temporal.get_workflow_handle(run_id)
    await handle.result()
    start = first = close = None
    async for event in handle.fetch_history_events():
        when = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            start = when
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and first is None:
            first = when
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            close = when
    assert start is not None and first is not None and close is not None
    return first - start, close - start


async def arm(kind: str, flood: int, latency: float, slots: int) -> tuple[float, float]:
    async with stack(
        llm_latency=latency, llm_slots=slots, fairness=kind != "fifo", tenants_file=TENANTS
    ) as built:
        async with httpx.AsyncClient(base_url=built.api.url, timeout=60) as http:
            a = {"Authorization": f"Bearer {await built.key('tenant-a')}"}
            b = {"Authorization": f"Bearer {await built.key('tenant-b')}"}
            # A first run warms the worker (imports, caches), as a running deployment's is.
            warm = await http.post("/v1/runs", json={"question": "Warm-up?", **SHAPE}, headers=b)
            await built.temporal.get_workflow_handle(warm.json()["id"]).result()
            if kind != "idle":
                answers = await asyncio.gather(
                    *(
                        http.post("/v1/runs", json={"question": f"Flood question {n}?", **SHAPE}, headers=a)
                        for n in range(flood)
                    )
                )
                assert all(r.status_code == 201 for r in answers), [r.text for r in answers][:2]
                await asyncio.sleep(1.0)  # A's calls are queued
            started = await http.post(
                "/v1/runs", json={"question": "Tenant B's question?", **SHAPE}, headers=b
            )
            assert started.status_code == 201, started.text
            return await times_of(built, started.json()["id"])


async def main(sittings: int, flood: int, latency: float, slots: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {"idle": [], "fair": [], "fifo": []}
    for sitting in range(sittings):
        for kind in ("idle", "fair", "fifo"):
            first, report = await arm(kind, flood, latency, slots)
            results[kind].append((first, report))
            print(f"sitting {sitting + 1} {kind:>5}: first LLM call {first:6.2f} s, report {report:6.2f} s")
    summary: dict[str, object] = {"sittings": sittings, "flood_runs": flood, "llm_latency_s": latency}
    summary["llm_slots"] = slots
    for kind, values in results.items():
        summary[f"{kind}_first_call_s"] = round(statistics.median(v[0] for v in values), 2)
        summary[f"{kind}_report_s"] = round(statistics.median(v[1] for v in values), 2)
    idle_report = statistics.median(v[1] for v in results["idle"])
    fair_report = statistics.median(v[1] for v in results["fair"])
    fifo_report = statistics.median(v[1] for v in results["fifo"])
    summary["fair_vs_idle"] = round(fair_report / idle_report, 2)
    summary["fifo_vs_idle"] = round(fifo_report / idle_report, 2)
    summary["target_met"] = fair_report <= 1.5 * idle_report
    publish(summary, RESULTS)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sittings", type=int, default=3)
    parser.add_argument("--flood", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.sittings, args.flood, args.latency, args.slots))

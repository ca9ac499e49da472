"""Event fan-out: 200 clients on one run's Server-Sent Events through one `cairn serve` process, and how
long an event takes from the workflow's state change to each client.

One run waits for approval; this process connects the subscribers, then edits the run's plan every
300 ms (each edit is a new plan version: one `plan` event). An event's `at` is the workflow's time at
the state change (the start of the workflow task that made it), so for each client
    latency = when the client read the event - the event's `at`
which holds the worker's task, the stream's long-poll update, the API's fan-out and the SSE write.
Worker, API and scripted LLM run in processes of their own (bench/api_stack.py); the subscribers run
here. Target: p95 under 500 ms.
    python bench/event_fanout.py [--subscribers 200] [--events 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.api_stack import stack, wait_phase
from bench.results_io import publish
from bench.stats import percentile
from common.models import EditPlan, Plan, RunStatus, StepSpec

RESULTS = Path(__file__).parent / "results" / "event_fanout.json"


async def subscribe(http: httpx.AsyncClient, run_id: str, after: int, wanted: int, out: list[float]) -> None:
    """Read `wanted` plan events after event id `after`, recording each one's latency."""
    seen = 0
    async with http.stream(
        "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(after)}
    ) as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            now = time.time()
            event = json.loads(line[5:])
            if event["type"] != "plan":
                continue
            out.append((now - datetime.fromisoformat(event["at"]).timestamp()) * 1000)
            seen += 1
            if seen >= wanted:
                return


async def main(subscribers: int, events: int) -> None:
    async with stack() as built:
        key = await built.key("acme")
        limits = httpx.Limits(max_connections=subscribers + 10, max_keepalive_connections=subscribers + 10)
        async with httpx.AsyncClient(
            base_url=built.api.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(120, connect=30),
            limits=limits,
        ) as http:
            run_id = (await http.post("/v1/runs", json={"question": "How do glaciers move?"})).json()["id"]
            await wait_phase(built.temporal, run_id, "awaiting_approval")
            handle = built.temporal.get_workflow_handle(run_id)
            # Where the stream is now: new subscribers start after it.
            async with http.stream("GET", f"/v1/runs/{run_id}/events") as first:
                last = 0
                async for line in first.aiter_lines():
                    if line.startswith("id:"):
                        last = int(line[3:])
                    if line.startswith("data:") and '"awaiting_approval"' in line:
                        break
            latencies: list[float] = []
            readers = [
                asyncio.create_task(subscribe(http, run_id, last, events, latencies))
                for _ in range(subscribers)
            ]
            await asyncio.sleep(3)  # every subscriber connected and caught up
            connect_failures = sum(1 for r in readers if r.done() and r.exception())
            for n in range(events):
                status = await handle.query("status", result_type=RunStatus)
                assert status.plan is not None
                await handle.execute_update(
                    "edit_plan",
                    EditPlan(plan_version=status.plan.version, steps=[StepSpec(title=f"Step {n}")]),
                    result_type=Plan,
                )
                await asyncio.sleep(0.3)
            await asyncio.wait_for(asyncio.gather(*readers), 60)
            await http.post(f"/v1/runs/{run_id}/abort", json={})
    publish(
        {
            "subscribers": subscribers,
            "events_each": events,
            "deliveries": len(latencies),
            "connect_failures": connect_failures,
            "latency_p50_ms": round(percentile(latencies, 0.5), 1),
            "latency_p95_ms": round(percentile(latencies, 0.95), 1),
            "latency_max_ms": round(max(latencies), 1),
            "target_met": percentile(latencies, 0.95) < 500,
        },
        RESULTS,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.subscribers, args.events))

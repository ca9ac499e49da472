"""What `cairn serve` adds to reading a run: `GET /v1/runs/{id}` against a direct Temporal query of the
same run's status, in the same sitting, interleaved request by request.

One run waits for approval (its state is still), a worker and the API each run in a process of their
own (bench/api_stack.py), and this process asks N times through each door, alternating: HTTP with a
kept-alive connection and an API key (authentication, the rate limit, the tenant check and the query,
then JSON), and the Temporal client's query. Target: the API within 5 ms p50 of the direct query.
    python bench/api_overhead.py [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.api_stack import stack, wait_phase
from bench.results_io import publish
from bench.stats import percentile
from common.models import RunStatus

RESULTS = Path(__file__).parent / "results" / "api_overhead.json"


async def main(requests: int) -> None:
    async with stack() as built:
        key = await built.key("acme")
        async with httpx.AsyncClient(
            base_url=built.api.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http:
            started = await http.post("/v1/runs", json={"question": "How do glaciers move?"})
            run_id = started.json()["id"]
            await wait_phase(built.temporal, run_id, "awaiting_approval")
            handle = built.temporal.get_workflow_handle(run_id)
            api_ms: list[float] = []
            direct_ms: list[float] = []
            for i in range(requests + 20):
                begin = time.perf_counter()
                response = await http.get(f"/v1/runs/{run_id}")
                api = (time.perf_counter() - begin) * 1000
                assert response.status_code == 200
                begin = time.perf_counter()
                await handle.query("status", result_type=RunStatus)
                direct = (time.perf_counter() - begin) * 1000
                if i >= 20:  # warm-up: connections, caches, the tenant check's first describe
                    api_ms.append(api)
                    direct_ms.append(direct)
            await http.post(f"/v1/runs/{run_id}/abort", json={})
    p50 = percentile(api_ms, 0.5) - percentile(direct_ms, 0.5)
    publish(
        {
            "requests": requests,
            "api_p50_ms": round(percentile(api_ms, 0.5), 2),
            "api_p95_ms": round(percentile(api_ms, 0.95), 2),
            "direct_query_p50_ms": round(percentile(direct_ms, 0.5), 2),
            "direct_query_p95_ms": round(percentile(direct_ms, 0.95), 2),
            "api_overhead_p50_ms": round(p50, 2),
            "target_met": p50 <= 5.0,
        },
        RESULTS,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500)
    asyncio.run(main(parser.parse_args().requests))

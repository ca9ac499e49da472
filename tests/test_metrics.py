"""The worker's Prometheus endpoint: the SDK's metrics and Cairn's counters, with values that match what
really happened (calls the scripted server saw, tokens the run counted, sandbox runs by outcome)."""

from __future__ import annotations

import json
from pathlib import Path

from activities.sandbox import SandboxActivities
from client.api import CairnClient
from common import errors
from common.config import LLMConfig, ModelPrice, TemporalConfig
from common.names import (
    METRIC_LLM_CALLS,
    METRIC_LLM_COST,
    METRIC_LLM_INPUT_TOKENS,
    METRIC_LLM_OUTPUT_TOKENS,
    METRIC_SANDBOX_RUNS,
    llm_task_queue,
)
from common.plugin import connect
from testkit.dev_server import DevServer, free_port
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import SENTINEL_KEY
from tests.helpers import Sample, scrape
from tests.sandbox_support import sandbox_test_config
from worker import build_worker, metrics_runtime


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(v for n, got, v in samples if n == name and all(got.get(k) == x for k, x in labels.items()))


async def test_counters_match_the_run(
    dev_server: DevServer,
    llm: ScriptedLLM,
    task_queue: str,
    tmp_path: Path,
    sandbox_image: str,
) -> None:
    port = free_port()
    client = await connect(
        TemporalConfig.from_env({"TEMPORAL_ADDRESS": dev_server.address}),
        runtime=metrics_runtime(port),
        tracing=None,
    )
    prices = {"gpt-4o-mini": ModelPrice(input=1.0, output=2.0)}
    config = LLMConfig(api_key=SENTINEL_KEY, base_url=llm.base_url, request_timeout_seconds=10, prices=prices)
    llm.answer_next(json.dumps({"steps": [{"title": "Compute squares", "kind": "code"}]}), role="planner")
    llm.answer_next("```python\nraise SystemExit(3)\n```", role="coder")  # Fails once, then fixed.
    llm.fail_next(500, role="reporter")  # One failed call, retried by Temporal.
    sandbox = SandboxActivities(sandbox_test_config(tmp_path, pool_size=0))
    try:
        async with build_worker(client, task_queue, config, home=tmp_path, sandbox=sandbox):
            cairn = CairnClient(client, task_queue)
            wid = await cairn.start("Metered [steps=1]", auto_approve=True, max_plan_iterations=0)
            result = await cairn.result(wid)
            samples = await scrape(port)
    finally:
        await sandbox.close()

    assert any(n.startswith("temporal_") for n, _, _ in samples)  # The SDK's own metrics.
    queue = {"task_queue": task_queue}
    # LLM calls run on the LLM queue (worker.py), and their metrics carry its name.
    llm_queue = {"task_queue": llm_task_queue(task_queue)}
    ok_calls = total(samples, METRIC_LLM_CALLS, outcome="ok", **llm_queue)
    assert ok_calls == llm.calls(status=200) == result.usage.llm_calls == 5
    assert total(samples, METRIC_LLM_CALLS, outcome=errors.LLM_SERVER, role="reporter", **llm_queue) == 1
    assert total(samples, METRIC_LLM_CALLS, role="coder", model="gpt-4o-mini", **llm_queue) == 3
    assert total(samples, METRIC_LLM_INPUT_TOKENS, **llm_queue) == result.usage.input_tokens
    assert total(samples, METRIC_LLM_OUTPUT_TOKENS, **llm_queue) == result.usage.output_tokens
    cost = total(samples, f"{METRIC_LLM_COST}_sum", **llm_queue)
    assert abs(cost - result.usage.cost_usd) < 1e-9 and cost > 0
    assert total(samples, METRIC_SANDBOX_RUNS, outcome="failed", **queue) == 1
    assert total(samples, METRIC_SANDBOX_RUNS, outcome="ok", **queue) == 1

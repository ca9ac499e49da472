"""Traces reach a real OTLP receiver: one trace per run, GenAI spans for LLM calls, nothing duplicated by
replays, nothing secret. The receiver speaks the collector's protocol (testkit/otlp_receiver.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from client.api import CairnClient
from common.config import LLMConfig, ModelPrice, TemporalConfig
from common.plugin import connect
from common.tracing import enabled, tracing_from_env
from testkit.dev_server import DevServer, free_port
from testkit.otlp_receiver import OTLPReceiver, ReceivedSpan
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import SENTINEL_KEY
from tests.helpers import run, scrape
from tests.test_cli import CAIRN, cli_env
from worker import build_worker

REPO = Path(__file__).resolve().parent.parent
PRICES = {"gpt-4o-mini": ModelPrice(input=0.15, output=0.60)}


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    server = OTLPReceiver().start()
    yield server
    server.stop()


def run_trace(spans: list[ReceivedSpan], workflow_id: str) -> list[ReceivedSpan]:
    """The spans of the trace that the client's start of `workflow_id` opened."""
    starts = [
        s
        for s in spans
        if s.name == "StartWorkflow:ResearchWorkflow"
        and s.attributes.get("temporalWorkflowID") == workflow_id
    ]
    assert len(starts) == 1, [s.name for s in spans]
    return [s for s in spans if s.trace_id == starts[0].trace_id]


def assert_connected(trace: list[ReceivedSpan]) -> None:
    """One root (the client's start); every other span's parent is in the same trace."""
    ids = {s.span_id for s in trace}
    roots = [s for s in trace if not s.parent_span_id]
    assert [r.name for r in roots] == ["StartWorkflow:ResearchWorkflow"]
    orphans = [s.name for s in trace if s.parent_span_id and s.parent_span_id not in ids]
    assert orphans == []


def assert_nothing_secret(spans: list[ReceivedSpan]) -> None:
    for span in spans:
        for value in [*span.attributes.values(), *span.resource.values()]:
            assert SENTINEL_KEY not in str(value)
            assert "You are Cairn's" not in str(value)  # No prompt text by default.


def test_tracing_is_off_unless_an_otel_variable_is_set() -> None:
    assert tracing_from_env({}) is None
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"})
    assert not enabled({"OTEL_SERVICE_NAME": "cairn", "OTEL_TRACES_EXPORTER": "none"})
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_EXPORTER"):
        assert enabled({variable: "otlp" if variable == "OTEL_TRACES_EXPORTER" else "http://x"})
    tracing = tracing_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_SERVICE_NAME": "svc"})
    assert tracing is not None
    processors = tracing.provider._active_span_processor._span_processors
    assert [type(p) for p in processors] == [BatchSpanProcessor]  # Never exported synchronously.
    assert tracing.provider.resource.attributes["service.name"] == "svc"
    tracing.shutdown()


async def test_one_trace_per_run_with_genai_spans_and_no_replay_duplicates(
    dev_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path, receiver: OTLPReceiver
) -> None:
    tracing = tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    assert tracing is not None
    client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": dev_server.address}), tracing=tracing)
    config = LLMConfig(api_key=SENTINEL_KEY, base_url=llm.base_url, request_timeout_seconds=10, prices=PRICES)
    # No workflow cache: every workflow task replays the run from its first event, so any span made
    # during replay would show up here as a duplicate.
    async with build_worker(
        client, task_queue, config, home=tmp_path, max_cached_workflows=0, tracer=tracing.tracer
    ):
        cairn = CairnClient(client, task_queue)
        wid = await cairn.start("Traced question [steps=2]", auto_approve=True, max_plan_iterations=0)
        result = await cairn.result(wid)
    tracing.shutdown()

    trace = run_trace(receiver.received(), wid)
    assert_connected(trace)
    names = Counter(s.name for s in trace)
    calls = llm.calls()
    # plan and report through llm.chat; per step, two researcher turns and the finding through the
    # researcher graph's model and finding nodes.
    assert calls == result.usage.llm_calls == 8
    assert names["RunWorkflow:ResearchWorkflow"] == 1
    assert names["StartChildWorkflow:ResearcherWorkflow"] == names["RunWorkflow:ResearcherWorkflow"] == 2
    assert names["StartActivity:llm.chat"] == names["RunActivity:llm.chat"] == 2
    graph_llm = names["RunActivity:researcher.model"] + names["RunActivity:researcher.finding"]
    assert graph_llm == 6 and names["RunActivity:researcher.corpus_search"] == 2
    assert names["chat gpt-4o-mini"] == calls
    assert names["RunActivity:report.save"] == 1
    by_id = {s.span_id: s for s in trace}
    children = {
        s.attributes["temporalWorkflowID"] for s in trace if s.name == "RunWorkflow:ResearcherWorkflow"
    }
    assert children == {f"{wid}/s1", f"{wid}/s2"}

    chats = [s for s in trace if s.name == "chat gpt-4o-mini"]
    for span in chats:
        assert by_id[span.parent_span_id].name in (
            "RunActivity:llm.chat",
            "RunActivity:researcher.model",
            "RunActivity:researcher.finding",
        )
        a = span.attributes
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "gpt-4o-mini"
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        expected = (a["gen_ai.usage.input_tokens"] * 0.15 + a["gen_ai.usage.output_tokens"] * 0.60) / 1e6
        assert a["cairn.cost_usd"] == pytest.approx(expected)
        assert a["cairn.role"] in ("planner", "researcher", "reporter")
    assert {s.attributes["cairn.purpose"] for s in chats} >= {"plan v1", "write report"}
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in chats) == result.usage.input_tokens
    assert sum(s.attributes["cairn.cost_usd"] for s in chats) == pytest.approx(result.usage.cost_usd)
    assert result.usage.cost_usd > 0
    assert_nothing_secret(receiver.received())


async def test_env_configured_worker_and_cli_share_one_trace(
    dev_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path, receiver: OTLPReceiver
) -> None:
    """Configured by OTEL_* alone: a worker process and a `cairn research` process, each exporting on
    exit, give one trace; the worker's metrics endpoint serves the SDK's and Cairn's metrics."""
    metrics_port = free_port()
    env = cli_env(
        TEMPORAL_ADDRESS=dev_server.address,
        CAIRN_TASK_QUEUE=task_queue,
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY=SENTINEL_KEY,
        CAIRN_HOME=str(tmp_path),
        CAIRN_SANDBOX_POOL_SIZE="0",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
    )
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_") or k == "OTEL_EXPORTER_OTLP_ENDPOINT"}
    log = await asyncio.to_thread(open, tmp_path / "worker.log", "wb")
    try:
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "worker.py"),
            env=dict(env, OTEL_SERVICE_NAME="cairn-worker", CAIRN_METRICS_PORT=str(metrics_port)),
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
        )
    finally:
        log.close()  # The worker holds its own copy of the descriptor.
    try:
        _, out, _ = await run(
            CAIRN,
            "research",
            "Traced by env [steps=1]",
            "--auto-approve",
            "--max-plan-iterations",
            "0",
            "--wait",
            "--json",
            env=dict(env, OTEL_SERVICE_NAME="cairn-cli"),
        )
        wid = json.loads(out)["workflow_id"]
        metrics = await scrape(metrics_port)
        assert any(name.startswith("temporal_") for name, _, _ in metrics)
        calls = sum(
            v for name, labels, v in metrics if name == "cairn_llm_calls" and labels["outcome"] == "ok"
        )
        assert calls == llm.calls() == 5  # plan, report, and the step's two turns and finding
    finally:
        worker.send_signal(signal.SIGTERM)  # A graceful stop exports the spans still queued.
        code = await asyncio.wait_for(worker.wait(), 60)
    worker_log = (tmp_path / "worker.log").read_text()
    assert code == 0, worker_log
    # A worker process runs on uvloop (worker.event_loop_runner); spans and metrics are the same on it.
    assert "(event loop: uvloop)" in worker_log, worker_log

    trace = run_trace(receiver.received(), wid)
    assert_connected(trace)
    services = {s.name: s.resource["service.name"] for s in trace}
    assert services["StartWorkflow:ResearchWorkflow"] == "cairn-cli"
    assert services["RunWorkflow:ResearchWorkflow"] == services["chat gpt-4o-mini"] == "cairn-worker"
    assert Counter(s.name for s in trace)["chat gpt-4o-mini"] == 5
    assert_nothing_secret(receiver.received())
    assert os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") is None  # The test process traced nothing.


async def test_a_run_started_with_the_temporal_cli_is_one_trace(
    dev_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path, receiver: OTLPReceiver
) -> None:
    """No client span to hang from: the run's own RunWorkflow span opens the trace, and its children,
    activities and LLM calls all join it."""
    from client.embedded import temporal_binary

    tracing = tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    assert tracing is not None
    client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": dev_server.address}), tracing=tracing)
    config = LLMConfig(api_key=SENTINEL_KEY, base_url=llm.base_url, request_timeout_seconds=10)
    wid = f"cli-traced-{task_queue}"
    async with build_worker(client, task_queue, config, home=tmp_path, tracer=tracing.tracer):
        await run(
            temporal_binary(),
            "workflow",
            "start",
            "--address",
            dev_server.address,
            "--type",
            "ResearchWorkflow",
            "--task-queue",
            task_queue,
            "--workflow-id",
            wid,
            "--input",
            json.dumps(
                {"question": "Started by hand [steps=2]", "auto_approve": True, "max_plan_iterations": 0}
            ),
        )
        await CairnClient(client, task_queue).result(wid)
    tracing.shutdown()
    spans = receiver.received()
    runs = [
        s
        for s in spans
        if s.name == "RunWorkflow:ResearchWorkflow" and s.attributes.get("temporalWorkflowID") == wid
    ]
    assert len(runs) == 1
    # Every span the run made is in that run's one trace, hanging from the run's (unexported) root.
    assert {s.trace_id for s in spans} == {runs[0].trace_id}
    ids = {s.span_id for s in spans}
    assert {s.parent_span_id for s in spans if s.parent_span_id not in ids} == {runs[0].parent_span_id}
    names = Counter(s.name for s in spans)
    assert names["RunWorkflow:ResearcherWorkflow"] == 2
    assert names["chat gpt-4o-mini"] == llm.calls() == 8
    assert names["RunActivity:report.save"] == 1

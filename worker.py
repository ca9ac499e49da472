"""Cairn's worker: registers the workflows and activities on a task queue and runs until stopped.

Configuration comes from the environment (see common/config.py); keys, the Docker client and the
sandbox pool are built here, once, and handed to activity objects, so they never travel through
Temporal. Observability is wired here too: tracing rides on the client (client/connection.py), and
CAIRN_METRICS_PORT gives this process's Temporal runtime a Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.langgraph import LangGraphPlugin
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.corpus import Corpus, open_corpus
from activities.fetch import PageFetcher
from activities.llm import LLMActivities
from activities.reports import ReportActivities
from activities.researcher import ResearcherNodes
from activities.sandbox import SandboxActivities
from activities.telemetry import Telemetry
from activities.web_search import WebSearch
from client.connection import connect
from common.config import LLMConfig, TemporalConfig, cairn_home, metrics_port
from common.names import RESEARCHER_GRAPH
from common.telemetry import shutdown_process_tracing
from common.web_config import FetchConfig, SearchConfig
from workflows.coder import CoderWorkflow
from workflows.research import ResearchWorkflow
from workflows.researcher import ResearcherWorkflow
from workflows.researcher_graph import build_graph
from workflows.runner import workflow_runner
from workflows.step import StepWorkflow

log = logging.getLogger("cairn.worker")


# Every plan step is a new child workflow, whose first task comes from the normal (not the sticky)
# queue; the SDK's default gives that queue one poller in five.
POLLER_TUNING: dict[str, Any] = {
    "max_concurrent_workflow_task_polls": 10,
    "nonsticky_to_sticky_poll_ratio": 1.0,
    # A workflow task waits this long on a dead worker's sticky queue before any worker may take it
    # (the SDK's default is 10 s): after a crash, runs move on within seconds.
    "sticky_queue_schedule_to_start_timeout": timedelta(seconds=2),
}


def build_worker(
    client: Client,
    task_queue: str,
    llm: LLMConfig | None = None,
    home: Path | None = None,
    sandbox: SandboxActivities | None = None,
    *,
    search: SearchConfig | None = None,
    fetch: FetchConfig | None = None,
    corpus: Corpus | None = None,
    **options: Any,
) -> Worker:
    """`options` go to Worker as they are (tests use `max_cached_workflows=0` to force replays).
    The researcher's tools come from the environment unless given: search backends, the page
    fetcher's limits, and the corpus (PostgreSQL with DATABASE_URL, else SQLite in `home`)."""
    # Activities' own spans use the tracer of the client's interceptor, so they join the run's trace.
    telemetry = Telemetry.for_client(client)
    home = home or cairn_home()
    llm_activities = LLMActivities(llm or LLMConfig.from_env(), telemetry)
    reports = ReportActivities(home / "reports")
    nodes = ResearcherNodes(
        llm_activities,
        WebSearch(search or SearchConfig.from_env(), telemetry),
        PageFetcher(fetch or FetchConfig.from_env(), telemetry),
        corpus or open_corpus({**os.environ, "CAIRN_HOME": str(home)}),
    )
    # The plugin wraps the graph's nodes in place, so each worker gets a graph of its own.
    researcher = LangGraphPlugin(graphs={RESEARCHER_GRAPH: build_graph(nodes)})
    # Connects to Docker lazily: a worker whose runs have no code steps never needs the engine.
    sandbox = sandbox or SandboxActivities()
    sandbox.telemetry = telemetry
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ResearchWorkflow, StepWorkflow, CoderWorkflow, ResearcherWorkflow],
        activities=[llm_activities.chat, reports.save, sandbox.exec],
        plugins=[researcher],
        workflow_runner=workflow_runner(),
        graceful_shutdown_timeout=timedelta(seconds=10),
        **{**POLLER_TUNING, **options},
    )


def metrics_runtime(port: int) -> Runtime:
    """A Temporal runtime serving the SDK's metrics, and Cairn's counters recorded through
    `activity.metric_meter()`, at http://127.0.0.1:<port>/metrics. One per process."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}")))


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TemporalConfig.from_env()
    port = metrics_port()
    client = await connect(config, **({"runtime": metrics_runtime(port)} if port else {}))
    if port:
        log.info("metrics at http://127.0.0.1:%d/metrics", port)
    sandbox = SandboxActivities()
    try:
        await sandbox.start()  # Reaps containers a crashed worker left and fills the warm pool.
    except ApplicationError as err:
        log.warning("code sandbox unavailable (%s): code steps fail until it is fixed", err)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker on %s, namespace %s, task queue %s", config.address, config.namespace, config.task_queue)
    try:
        async with build_worker(client, config.task_queue, sandbox=sandbox):
            await stop.wait()
    finally:
        await sandbox.close()
        shutdown_process_tracing()  # Export the spans still queued before the process ends.


if __name__ == "__main__":
    asyncio.run(main())

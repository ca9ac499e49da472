"""Cairn's worker: registers the workflows and activities on a task queue and runs until stopped.

Configuration comes from the environment (see common/config.py); keys, the Docker client and the
sandbox pool are built here, once, and handed to activity objects, so they never travel through
Temporal. Observability is wired here too: tracing rides on the client (common/plugin.py), and
CAIRN_METRICS_PORT gives this process's Temporal runtime a Prometheus endpoint.

One process runs two Temporal workers: one for workflows and non-LLM activities on the task queue,
and one for LLM calls on `<task queue>-llm`, whose dispatch rate the Temporal server caps across every
worker polling it (CAIRN_LLM_RATE_PER_SECOND). A provider's rate limit is per account, so only a limit
shared by all workers protects it; a per-worker limit would grow with the number of workers.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry.trace import Tracer
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.langgraph import LangGraphPlugin
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import PollerBehaviorAutoscaling, Worker

from activities.admission import AdmissionActivities
from activities.corpus import Corpus, open_corpus
from activities.fetch import PageFetcher
from activities.library import LibraryActivities
from activities.living import LivingActivities
from activities.llm import LLMActivities
from activities.mcp_tools import McpTools
from activities.reports import ReportActivities
from activities.researcher import ResearcherNodes
from activities.retention import RetentionActivities
from activities.sandbox import SandboxActivities
from activities.sandbox.config import SandboxConfig
from activities.telemetry import Telemetry
from activities.web_search import WebSearch
from client.server.db import database_of
from client.server.policy import Policies
from client.server.quotas import Quotas
from common.config import (
    WORKER_ROLES,
    LLMConfig,
    LLMLimits,
    TemporalConfig,
    cairn_home,
    metrics_port,
    private_files,
    worker_role,
)
from common.mcp_config import McpConfig
from common.names import RESEARCHER_GRAPH, llm_task_queue
from common.plugin import connect
from common.tracing import process_tracing, shutdown_process_tracing
from common.version import __version__
from common.web_config import FetchConfig, SearchConfig
from workflows.registry import WORKFLOWS
from workflows.researcher.graph import build_graph

log = logging.getLogger("cairn.worker")


# The worker's build id, named rather than computed: the SDK's default hashes the code of every loaded
# module, a third of a second before a restarted worker may poll. Cairn does not use worker
# versioning; the id names the release in the server's views of pollers.
BUILD_ID = f"cairn-{__version__}"

POLLER_TUNING: dict[str, Any] = {
    # Workflow-task pollers follow the server's hints of its backlog, from 2 to 40: with a fixed ten, a
    # worker with 200 runs left thousands of tasks to wait out its sticky queue and be replayed
    # (bench/scale_out.py; docs/benchmarks.md has the figures).
    "workflow_task_poller_behavior": PollerBehaviorAutoscaling(minimum=2, maximum=40, initial=10),
    # Every plan step is a new child workflow, whose first task comes from the normal (not the sticky)
    # queue; the SDK's default gives that queue one poller in five.
    "nonsticky_to_sticky_poll_ratio": 1.0,
    # A workflow task waits this long on a dead worker's sticky queue before any worker may take it
    # (the SDK's default is 10 s): after a crash, runs move on within seconds. One second is the least
    # the server honours; under overload a live worker's tasks also time out of its sticky queue, and
    # are replayed from their history by whichever worker polls next (bench/scale_out.py counts them).
    "sticky_queue_schedule_to_start_timeout": timedelta(seconds=1),
}


class CairnWorker:
    """The Temporal workers of one Cairn worker process, started and stopped together:
    `async with build_worker(...)` or `await build_worker(...).run()`."""

    def __init__(
        self, workers: list[Worker], closers: list[Callable[[], Awaitable[None]]] | None = None
    ) -> None:
        self.workers = workers
        # Resources the activities hold (the LLM client's connection pool), released once the workers
        # have stopped.
        self._closers = closers or []
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> CairnWorker:
        async with AsyncExitStack() as stack:
            for worker in self.workers:
                await stack.enter_async_context(worker)
            self._stack = stack.pop_all()  # Started: keep them running past this block.
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)
        await self._close()

    async def _close(self) -> None:
        closers, self._closers = self._closers, []
        for close in closers:
            await close()

    async def run(self) -> None:
        """Run until shut down; if one worker fails, the others stop too and the error is raised."""
        try:
            await asyncio.gather(*(worker.run() for worker in self.workers))
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        await asyncio.gather(*(worker.shutdown() for worker in self.workers))
        await self._close()


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
    mcp: McpConfig | None = None,
    llm_limits: LLMLimits | None = None,
    role: str = "all",
    tracer: Tracer | None = None,
    retention_days: Callable[[str], float] | None = None,
    policies: Policies | None = None,
    **options: Any,
) -> CairnWorker:
    """`options` go to the workflow worker as they are (tests use `max_cached_workflows=0` to force
    replays); an `identity` there also names the LLM worker, as `<identity>/llm`.
    The researcher's tools come from the environment unless given: search backends, the page
    fetcher's limits, and the corpus (PostgreSQL with DATABASE_URL, else SQLite in `home`).
    `llm_limits` (else CAIRN_LLM_*) sets the LLM worker's rate and concurrency; `role` is `all`,
    `workflows` (no LLM worker) or `llm` (only the LLM worker). `tracer` is the process's (common/tracing.py)
    when tracing is on: activities' own spans (LLM calls, fetches) then join the run's trace. The client
    carries Cairn's plugin (common/plugin.py: converter, tracing interceptor, sandbox), which every
    worker built on it inherits. `policies` (else CAIRN_TENANTS_FILE and the CAIRN_*_DOMAINS lists)
    are the tenants' quotas and domain policy, which scheduled runs are admitted under (runs.admit),
    against the API's ledger (DATABASE_URL, else `home`/api.db): give the API the same."""
    if role not in WORKER_ROLES:
        raise ValueError(f"unknown worker role {role!r}: one of {', '.join(WORKER_ROLES)}")
    telemetry = Telemetry(tracer)
    home = home or cairn_home()
    llm_activities = LLMActivities(llm or LLMConfig.from_env(), telemetry)
    reports = ReportActivities(home / "reports")
    corpus = corpus or open_corpus({**os.environ, "CAIRN_HOME": str(home)})
    nodes = ResearcherNodes(
        llm_activities,
        WebSearch(search or SearchConfig.from_env(), telemetry),
        PageFetcher(fetch or FetchConfig.from_env(), telemetry),
        corpus,
        McpTools(mcp if mcp is not None else McpConfig.from_env()),  # the operator's CAIRN_MCP_CONFIG
    )
    library = LibraryActivities(corpus)
    policies = policies if policies is not None else Policies.from_env()
    # Opened on first use: a worker whose tenants start no scheduled runs never connects to it.
    ledger = database_of({**os.environ, "CAIRN_HOME": str(home)})
    admission = AdmissionActivities(Quotas(client, ledger, policies), policies)
    retention = RetentionActivities(
        corpus,
        home,
        SandboxConfig.from_env().artifacts_dir or home / "artifacts",
        os.environ,
        retention_days or (lambda tenant: policies.of(tenant).retention_days),
        lambda: sorted(policies.tenants),
    )
    llm_queue = llm_task_queue(task_queue)
    # The plugin wraps the graph's nodes in place, so each worker gets a graph of its own.
    graph = build_graph(nodes, llm_task_queue=llm_queue)
    researcher = LangGraphPlugin(graphs={RESEARCHER_GRAPH: graph})
    workers: list[Worker] = []
    if role in ("all", "workflows"):
        # Connects to Docker lazily: a worker whose runs have no code steps never needs the engine.
        sandbox = sandbox or SandboxActivities()
        sandbox.telemetry = telemetry
        workers.append(
            Worker(
                client,
                task_queue=task_queue,
                workflows=list(WORKFLOWS),
                # llm.chat (and, through the plugin, every graph node) is registered here too, only
                # for calls scheduled on this queue before LLM calls had a queue of their own: a run
                # in flight across the upgrade still finds a worker for them. New calls never come here.
                activities=[
                    llm_activities.chat,
                    reports.save,
                    sandbox.exec,
                    LivingActivities().predecessor,
                    admission.admit,
                    library.add,
                    retention.sweep,
                ],
                plugins=[researcher],
                graceful_shutdown_timeout=timedelta(seconds=10),
                build_id=BUILD_ID,
                **{**POLLER_TUNING, **options},
            )
        )
    if role in ("all", "llm"):
        limits = llm_limits or LLMLimits.from_env()
        workers.append(
            Worker(
                client,
                task_queue=llm_queue,
                # The plugin offers every node of the graph as an activity and names none publicly;
                # only the model and finding nodes are ever scheduled on this queue (build_graph).
                activities=[llm_activities.chat, *researcher.activities],
                # Task-queue-wide and enforced by the server, across every worker polling the queue.
                max_task_queue_activities_per_second=limits.rate_per_second,
                # Per worker: how many calls this process has in flight at once.
                max_concurrent_activities=limits.max_concurrent,
                graceful_shutdown_timeout=timedelta(seconds=10),
                build_id=BUILD_ID,
                identity=f"{options.get('identity') or client.identity}/llm",
            )
        )
    return CairnWorker(workers, [llm_activities.close, ledger.close])


T = TypeVar("T")


def event_loop_runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    """How a worker process runs its event loop: uvloop where it is installed (a dependency on Linux
    and macOS), else asyncio's own loop. The loop carries every poll, payload conversion and LLM
    request of the process, so a faster loop is less CPU per call (docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def metrics_runtime(port: int) -> Runtime:
    """A Temporal runtime serving the SDK's metrics, and Cairn's counters recorded through
    `activity.metric_meter()`, at http://127.0.0.1:<port>/metrics. One per process."""
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}")))


async def warm_up(sandbox: SandboxActivities, role: str) -> None:
    """What a worker needs soon but not to poll: the OpenAI SDK (imported off the event loop), and the
    sandbox (containers a crashed worker left reaped, the warm pool filled)."""
    if role != "workflows":
        await asyncio.to_thread(importlib.import_module, "openai")
    if role != "llm":  # An LLM-only worker runs no code.
        try:
            await sandbox.start()
        except ApplicationError as err:
            log.warning("code sandbox unavailable (%s): code steps fail until it is fixed", err)


async def keep_retention_schedule(client: Client, task_queue: str) -> None:
    """The retention sweep's Temporal Schedule exists (client/retention.py); a server that refuses it
    (no permission) is told in the log, and the worker runs on."""
    from client.retention import DEFAULT_CRON, ensure_retention_schedule

    try:
        await ensure_retention_schedule(
            client, task_queue, os.environ.get("CAIRN_RETENTION_CRON") or DEFAULT_CRON
        )
    except Exception as err:
        log.warning("could not create the retention sweep's schedule: %s", str(err)[:300])


async def main() -> None:
    private_files()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TemporalConfig.from_env()
    role, limits = worker_role(), LLMLimits.from_env()  # A bad value stops the worker here, named.
    port = metrics_port()
    tracing = process_tracing()
    client = await (
        connect(config, tracing=tracing, runtime=metrics_runtime(port))
        if port
        else connect(config, tracing=tracing)
    )
    if port:
        log.info("metrics at http://127.0.0.1:%d/metrics", port)
    sandbox = SandboxActivities()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker on %s, namespace %s, task queue %s (event loop: %s)",
        config.address,
        config.namespace,
        config.task_queue,
        type(loop).__module__.split(".")[0],
    )
    if role != "workflows":
        log.info(
            "LLM calls on %s: %s calls/s across all workers, %d at once in this one",
            llm_task_queue(config.task_queue),
            "unlimited" if limits.rate_per_second is None else f"{limits.rate_per_second:g}",
            limits.max_concurrent,
        )
    try:
        tracer = tracing.tracer if tracing is not None else None
        async with build_worker(
            client, config.task_queue, sandbox=sandbox, llm_limits=limits, role=role, tracer=tracer
        ):
            # Polling first, then the rest: a restarted worker takes up its runs' work at once, and
            # what it needs later comes while that work is under way.
            warming = asyncio.create_task(warm_up(sandbox, role))
            if role != "llm":
                await keep_retention_schedule(client, config.task_queue)
            await stop.wait()
            warming.cancel()
    finally:
        await sandbox.close()
        shutdown_process_tracing()  # Export the spans still queued before the process ends.


if __name__ == "__main__":
    event_loop_runner()(main())

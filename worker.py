"""Cairn's worker: registers the workflows and activities on a task queue and runs until stopped.

Configuration comes from the environment (see common/config.py); keys, the Docker client and the
sandbox pool are built here, once, and handed to activity objects, so they never travel through
Temporal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from activities.llm import LLMActivities
from activities.reports import ReportActivities
from activities.sandbox import SandboxActivities
from client.connection import connect
from common.config import LLMConfig, TemporalConfig, cairn_home
from workflows.coder import CoderWorkflow
from workflows.research import ResearchWorkflow
from workflows.runner import workflow_runner
from workflows.step import StepWorkflow

log = logging.getLogger("cairn.worker")


def build_worker(
    client: Client,
    task_queue: str,
    llm: LLMConfig | None = None,
    home: Path | None = None,
    sandbox: SandboxActivities | None = None,
) -> Worker:
    llm_activities = LLMActivities(llm or LLMConfig.from_env())
    reports = ReportActivities((home or cairn_home()) / "reports")
    # Connects to Docker lazily: a worker whose runs have no code steps never needs the engine.
    sandbox = sandbox or SandboxActivities()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ResearchWorkflow, StepWorkflow, CoderWorkflow],
        activities=[llm_activities.chat, reports.save, sandbox.exec],
        workflow_runner=workflow_runner(),
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TemporalConfig.from_env()
    client = await connect(config)
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


if __name__ == "__main__":
    asyncio.run(main())

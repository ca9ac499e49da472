"""Bare Temporal in the shape of a Cairn run: the floor bench/orchestration_overhead.py compares against.

Why this exists: a shared virtual machine's speed drifts from one minute to the next, so an overhead
figure alone says as much about the machine as about Cairn. Runs of this module's workflows,
interleaved with Cairn's runs on the same server and in the same process, cost what Temporal alone costs
for the same work: the same child workflows, the same activities in the same order, LLM calls on a queue
of their own (as Cairn's are), each "LLM call" an activity that only sleeps the stub's latency. No
sandbox, no LangGraph, no LLM client, no payload conversion beyond plain JSON: the difference between
the two is Cairn's own cost.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

TIMEOUT = timedelta(seconds=30)


@dataclass
class Shape:
    steps: int
    parallel: int
    latency: float  # seconds per "LLM call"
    llm_queue: str


@activity.defn(name="bare.llm")
async def llm(latency: float) -> str:
    await asyncio.sleep(latency)
    return "answer"


@activity.defn(name="bare.tool")
async def tool() -> str:
    return "result"


@workflow.defn(name="BareStep")
class BareStep:
    """A researcher step: model turn, tool, model turn, finding."""

    @workflow.run
    async def run(self, shape: Shape) -> int:
        await _llm(shape)
        await workflow.execute_activity(tool, start_to_close_timeout=TIMEOUT)
        await _llm(shape)
        await _llm(shape)
        return 3


@workflow.defn(name="BareRun")
class BareRun:
    """A run: plan, the steps as children `parallel` at a time, review, report, save."""

    @workflow.run
    async def run(self, shape: Shape) -> int:
        calls = 1
        await _llm(shape)
        wid = workflow.info().workflow_id
        for first in range(0, shape.steps, shape.parallel):
            wave = range(first, min(first + shape.parallel, shape.steps))
            done = await asyncio.gather(
                *(workflow.execute_child_workflow(BareStep.run, shape, id=f"{wid}/s{i + 1}") for i in wave)
            )
            calls += sum(done)
        await _llm(shape)
        await _llm(shape)
        await workflow.execute_activity(tool, start_to_close_timeout=TIMEOUT)
        return calls + 2


async def _llm(shape: Shape) -> None:
    await workflow.execute_activity(
        llm, shape.latency, task_queue=shape.llm_queue, start_to_close_timeout=TIMEOUT
    )


def bare_workers(client: Client, task_queue: str) -> list[Worker]:
    """The workers for bare runs on `task_queue` (workflows, tools) and `<task_queue>-llm`."""
    return [
        Worker(
            client,
            task_queue=task_queue,
            workflows=[BareRun, BareStep],
            activities=[tool],
            # Bench workflows are trivially deterministic; the sandbox is part of Cairn's cost here.
            workflow_runner=UnsandboxedWorkflowRunner(),
        ),
        Worker(client, task_queue=f"{task_queue}-llm", activities=[llm]),
    ]

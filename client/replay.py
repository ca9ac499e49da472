"""Replaying histories against the current workflow code: `cairn replay ID` and the CI replay tests.

A replay runs the workflow code over a recorded history and fails if the code would now issue
different commands: the check that a change is safe for runs already in flight. No activity runs, so
no LLM is called and nothing is fetched; large payloads are read back from the payload store.
Must never: execute an activity (the researcher graph's nodes here refuse to run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from temporalio.client import Client, WorkflowHistory
from temporalio.langgraph import LangGraphPlugin
from temporalio.worker import Replayer

from common.names import RESEARCHER_GRAPH
from common.plugin import CairnPlugin
from workflows.registry import WORKFLOWS
from workflows.researcher.graph import ToolTask, build_graph


class _ReplayOnlyNodes:
    """The researcher graph's shape without its I/O: replay reads node results from history."""

    @staticmethod
    def _never() -> NoReturn:
        raise RuntimeError("a replay must not execute activities")

    async def model(self, state: Any) -> dict[str, Any]:
        self._never()

    async def finding(self, state: Any) -> dict[str, Any]:
        self._never()

    async def web_search(self, task: ToolTask) -> dict[str, Any]:
        self._never()

    async def fetch_url(self, task: ToolTask) -> dict[str, Any]:
        self._never()

    async def corpus_search(self, task: ToolTask) -> dict[str, Any]:
        self._never()

    async def recall(self, task: ToolTask) -> dict[str, Any]:
        self._never()

    async def mcp(self, task: ToolTask) -> dict[str, Any]:
        self._never()


def replayer(plugin: CairnPlugin, *workflows: type) -> Replayer:
    """A replayer of the worker's workflows (or `workflows`), configured as the worker is."""
    graphs = LangGraphPlugin(graphs={RESEARCHER_GRAPH: build_graph(_ReplayOnlyNodes())})
    return Replayer(workflows=list(workflows or WORKFLOWS), plugins=[plugin, graphs])


@dataclass
class ReplayOutcome:
    workflow_id: str
    workflow_type: str
    events: int
    ok: bool
    problem: str | None = None


async def replay_history(history: WorkflowHistory, plugin: CairnPlugin) -> ReplayOutcome:
    kind = history.events[0].workflow_execution_started_event_attributes.workflow_type.name
    result = await replayer(plugin).replay_workflow(history, raise_on_replay_failure=False)
    failure = result.replay_failure
    return ReplayOutcome(
        workflow_id=history.workflow_id,
        workflow_type=kind,
        events=len(history.events),
        ok=failure is None,
        problem=None if failure is None else f"{type(failure).__name__}: {failure}",
    )


async def replay_run(client: Client, workflow_id: str, *, children: bool = True) -> list[ReplayOutcome]:
    """Replay a run's history and, with `children`, each of its steps' child workflows."""
    plugin = CairnPlugin(offload=False)  # reads large payloads from the store, as the worker wrote them
    handle = client.get_workflow_handle(workflow_id)
    history = await handle.fetch_history()
    outcomes = [await replay_history(history, plugin)]
    if children:
        for event in history.events:
            if event.HasField("child_workflow_execution_started_event_attributes"):
                child = event.child_workflow_execution_started_event_attributes.workflow_execution
                child_history = await client.get_workflow_handle(
                    child.workflow_id, run_id=child.run_id
                ).fetch_history()
                outcomes.append(await replay_history(child_history, plugin))
    return outcomes

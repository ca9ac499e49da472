"""Committed histories replay against the current workflow code: a non-deterministic change fails CI.

To change workflow code that runs may be in the middle of, guard the change with `workflow.patched`
(see the README) and record a new history beside the old ones (`python -m tests.record_histories`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from client import replay
from common.models import ResearchResult
from common.names import (
    CODER_WORKFLOW,
    RESEARCH_WORKFLOW,
    RESEARCHER_WORKFLOW,
    RUNS_ADMIT,
    RUNS_PREDECESSOR,
    STEP_WORKFLOW,
)
from common.plugin import CairnPlugin
from workflows.legacy_step import StepWorkflow
from workflows.research import ResearchWorkflow

# The workflow sandbox re-imports this module (for _ChangedResearch below): it must import nothing
# that does I/O at import time, such as tests.conftest.
HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem.replace("__", "/"), json.loads(path.read_text()))


def workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def replayer(*workflows: type) -> Replayer:
    return replay.replayer(CairnPlugin(offload=False), *workflows)


def test_every_workflow_type_has_committed_histories() -> None:
    types = {workflow_type(load(p)) for p in HISTORIES}
    assert types >= {RESEARCH_WORKFLOW, STEP_WORKFLOW, CODER_WORKFLOW, RESEARCHER_WORKFLOW}


def test_scheduled_runs_from_before_and_since_admission_are_both_committed() -> None:
    """A scheduled run recorded before runs.admit existed, and one since: both replay (above), so the
    admission's workflow.patched guard keeps in-flight scheduled runs as they were."""

    def activities(stem: str) -> list[str]:
        history = load(next(p for p in HISTORIES if p.stem == stem))
        return [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
        ]

    assert activities("research_scheduled")[:2] == [RUNS_ADMIT, RUNS_PREDECESSOR]
    before = activities("research_scheduled_unadmitted")
    assert before[0] == RUNS_PREDECESSOR and RUNS_ADMIT not in before


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_committed_history_replays(path: Path) -> None:
    result = await replayer().replay_workflow(load(path), raise_on_replay_failure=True)
    assert result.replay_failure is None


@workflow.defn(name=RESEARCH_WORKFLOW)
class _ChangedResearch(ResearchWorkflow):
    """An unguarded change: a timer that recorded runs never had."""

    @workflow.run
    async def run(self, *inputs: Any) -> ResearchResult:
        await workflow.sleep(1)
        return await super().run(*inputs)


async def test_an_unguarded_change_is_caught() -> None:
    history = load(next(p for p in HISTORIES if p.stem == "research_full_loop"))
    result = await replayer(_ChangedResearch, StepWorkflow).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()

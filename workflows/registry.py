"""Every workflow type a Cairn worker runs and a replayer replays, in one list: the worker (worker.py)
and `cairn replay` (client/replay.py) register the same ones. Imports workflow modules only."""

from workflows.coder import CoderWorkflow
from workflows.legacy_step import StepWorkflow
from workflows.research import ResearchWorkflow
from workflows.researcher.workflow import ResearcherWorkflow
from workflows.retention import RetentionWorkflow

WORKFLOWS = (ResearchWorkflow, StepWorkflow, CoderWorkflow, ResearcherWorkflow, RetentionWorkflow)

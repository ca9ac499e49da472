"""Every workflow, activity, signal, query, update and task-queue name Cairn uses, in one place.

Workflows, activities, the client, tests and history checks all import these constants. Signal, query
and update names are public interface (documented in the README): never rename one; add a new name.
"""

from typing import Final

# Task queues.
DEFAULT_TASK_QUEUE: Final = "research"

# Workflow types.
RESEARCH_WORKFLOW: Final = "ResearchWorkflow"
STEP_WORKFLOW: Final = "StepWorkflow"
CODER_WORKFLOW: Final = "CoderWorkflow"

# Activity types.
LLM_CHAT: Final = "llm.chat"
REPORT_SAVE: Final = "report.save"
SANDBOX_EXEC: Final = "sandbox.exec"

# Signals, updates and queries of ResearchWorkflow.
SIGNAL_APPROVE_PLAN: Final = "approve_plan"
SIGNAL_REQUEST_CHANGES: Final = "request_changes"
SIGNAL_ABORT: Final = "abort"
UPDATE_EDIT_PLAN: Final = "edit_plan"
QUERY_STATUS: Final = "status"

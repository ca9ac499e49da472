"""Every workflow, activity, signal, query, update and task-queue name Cairn uses, in one place.

Workflows, activities, the client, tests and history checks all import these constants. Signal, query
and update names are public interface (documented in the README): never rename one; add a new name.
"""

from typing import Final

# Task queues.
DEFAULT_TASK_QUEUE: Final = "research"
# LLM calls run on a queue of their own beside the workflows' queue, so the Temporal server can cap the
# calls per second of every worker together (a provider's limit is per account, not per worker).
LLM_TASK_QUEUE_SUFFIX: Final = "-llm"


def llm_task_queue(task_queue: str) -> str:
    """The queue of the LLM activities that workflows on `task_queue` schedule."""
    return f"{task_queue}{LLM_TASK_QUEUE_SUFFIX}"


# Workflow types.
RESEARCH_WORKFLOW: Final = "ResearchWorkflow"
STEP_WORKFLOW: Final = "StepWorkflow"
CODER_WORKFLOW: Final = "CoderWorkflow"
RESEARCHER_WORKFLOW: Final = "ResearcherWorkflow"
RETENTION_WORKFLOW: Final = "RetentionWorkflow"

# The researcher's LangGraph graph. The temporalio-langgraph plugin runs each of its activity nodes as
# an activity named "<graph>.<node>"; these are those names.
RESEARCHER_GRAPH: Final = "researcher"
NODE_MODEL: Final = "model"
NODE_FINDING: Final = "finding"
TOOL_WEB_SEARCH: Final = "web_search"
TOOL_FETCH_URL: Final = "fetch_url"
TOOL_CORPUS_SEARCH: Final = "corpus_search"
TOOL_RECALL: Final = "recall"
RESEARCHER_TOOLS: Final = (TOOL_WEB_SEARCH, TOOL_FETCH_URL, TOOL_CORPUS_SEARCH, TOOL_RECALL)
# Every MCP tool call (the operator's servers, common/mcp_config.py) runs as this one node.
NODE_MCP: Final = "mcp"
RESEARCHER_ACTIVITIES: Final = tuple(
    f"{RESEARCHER_GRAPH}.{node}" for node in (NODE_MODEL, NODE_FINDING, *RESEARCHER_TOOLS, NODE_MCP)
)

# Activity types.
LLM_CHAT: Final = "llm.chat"
REPORT_SAVE: Final = "report.save"
SANDBOX_EXEC: Final = "sandbox.exec"
RUNS_PREDECESSOR: Final = "runs.predecessor"
RUNS_ADMIT: Final = "runs.admit"
LIBRARY_ADD: Final = "library.add"
RETENTION_SWEEP: Final = "retention.sweep"

# Signals, updates and queries of ResearchWorkflow.
SIGNAL_APPROVE_PLAN: Final = "approve_plan"
SIGNAL_REQUEST_CHANGES: Final = "request_changes"
SIGNAL_ABORT: Final = "abort"
SIGNAL_SKIP_STEP: Final = "skip_step"
SIGNAL_ADD_STEP: Final = "add_step"
UPDATE_EDIT_PLAN: Final = "edit_plan"
UPDATE_RAISE_BUDGET: Final = "raise_budget"
UPDATE_ANSWER_CLARIFICATION: Final = "answer_clarification"
QUERY_STATUS: Final = "status"

# Custom search attributes (Keyword), registered by `cairn dev` (client/embedded.py) and filterable in
# the Web UI and with `temporal workflow list --query "CairnPhase='awaiting_approval'"`.
SEARCH_ATTR_PHASE: Final = "CairnPhase"
SEARCH_ATTR_OWNER: Final = "CairnOwner"
# Whose run it is (common/tenancy.py). The API lists and checks runs by it; a run without it is the
# default tenant's.
SEARCH_ATTR_TENANT: Final = "CairnTenant"
CAIRN_SEARCH_ATTRIBUTES: Final = (SEARCH_ATTR_PHASE, SEARCH_ATTR_OWNER, SEARCH_ATTR_TENANT)

# Cairn's own metrics, on the worker's Prometheus endpoint beside the SDK's `temporal_*` ones. Each also
# carries the SDK's namespace, task_queue and activity_type attributes. Public interface: dashboards
# and alerts name them, so never rename one.
METRIC_LLM_CALLS: Final = "cairn_llm_calls"  # counter; model, role, outcome (ok or error type)
METRIC_LLM_INPUT_TOKENS: Final = "cairn_llm_input_tokens"  # counter; model, role
METRIC_LLM_OUTPUT_TOKENS: Final = "cairn_llm_output_tokens"  # counter; model, role
METRIC_LLM_COST: Final = "cairn_llm_cost_usd"  # float histogram of per-call cost; _sum is the spend
METRIC_SEARCHES: Final = "cairn_searches"  # counter; provider, outcome
METRIC_PAGE_FETCHES: Final = "cairn_page_fetches"  # counter; outcome
METRIC_SANDBOX_RUNS: Final = "cairn_sandbox_runs"  # counter; outcome

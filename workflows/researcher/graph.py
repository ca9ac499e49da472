"""The researcher's LangGraph graph: model, one node per tool, working memory, and the finding writer.

The graph runs through the temporalio-langgraph plugin: nodes marked `execute_in: activity` (the model,
each tool, the finding writer) run as Temporal activities named `researcher.<node>`, while the control
flow (routers) and the memory node replay inside the workflow. Each tool call the model makes is sent
to its tool's node on its own (LangGraph `Send`), so every call is its own activity and a round of
calls runs in parallel.

Routers are async: a sync router ends in `run_in_executor`, which workflows forbid. Everything here
that runs in the workflow is deterministic; the node functions that do I/O are methods of
activities/researcher/nodes.py's `ResearcherNodes`, bound on the worker.

Budgets are enforced here, in workflow state, so they hold across crashes: every tool call (answered
or refused) counts against the step's tool-call budget, every model call's tokens against its token
budget; at either limit the graph goes straight to the finding writer with what it has.
"""

from __future__ import annotations

import operator
import threading
from typing import Annotated, Any, Protocol, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from common import errors
from common.domains import DomainPolicy
from common.mcp_config import split_name
from common.names import (
    NODE_FINDING,
    NODE_MCP,
    NODE_MODEL,
    RESEARCHER_TOOLS,
    TOOL_CORPUS_SEARCH,
    TOOL_FETCH_URL,
    TOOL_RECALL,
    TOOL_WEB_SEARCH,
)
from common.tenancy import DEFAULT_CORPUS_SCOPE
from workflows.calls import (
    HEARTBEAT_TIMEOUT,
    LLM_HEARTBEAT,
    LLM_RETRY,
    LLM_SCHEDULE_TO_CLOSE,
    LLM_START_TO_CLOSE,
    MCP_START_TO_CLOSE,
    TOOL_RETRY,
    TOOL_START_TO_CLOSE,
)
from workflows.researcher.memory import remember

NODE_MEMORY = "memory"
NODE_REFUSE = "refuse"
# A malformed finding is shown back to the model this many times in all before the step fails.
FINDING_ATTEMPTS = 3


def merge_messages(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append new messages; a message with a known id replaces the old one (how memory compacts)."""
    merged = list(left)
    where = {m["id"]: i for i, m in enumerate(merged)}
    for m in right:
        if m["id"] in where:
            merged[where[m["id"]]] = m
        else:
            where[m["id"]] = len(merged)
            merged.append(m)
    return merged


def merge_sources(left: list[dict[str, Any]], right: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = {s["key"]: s for s in left}
    merged.update({s["key"]: s for s in right})
    return list(merged.values())


class Limits(TypedDict):
    tool_calls: int
    tokens: int
    context_tokens: int


class ResearcherState(TypedDict, total=False):
    title: str  # the step's title, for activity summaries
    task: str  # the step as the researcher was given it (question, step, what earlier steps found)
    messages: Annotated[list[dict[str, Any]], merge_messages]
    sources: Annotated[list[dict[str, Any]], merge_sources]
    # One entry per model call: model, input_tokens, output_tokens, cost_usd.
    usage: Annotated[list[dict[str, Any]], operator.add]
    tokens: Annotated[int, operator.add]
    tool_calls: Annotated[int, operator.add]
    offered: list[str]  # the tools this worker offers (only configured search backends)
    limits: Limits
    scope: str  # the run's archive
    # The tenant's documents, the only ones `corpus_search` reads (common/tenancy.py corpus_scope). A
    # state begun before tenants has none: that was the default tenant's, "corpus".
    corpus: str
    # The run's domain policy (common/domains.py DomainPolicy as JSON); absent or None: no policy.
    domains: dict[str, Any] | None
    tenant: str  # whose run: which of the operator's MCP servers it may use (absent: the default tenant)
    # The tenant's library (its finished runs' sources and findings), searched beside the documents
    # by corpus_search and beside the archive by recall; "" or absent: not searched.
    library: str
    turn: int
    finding: dict[str, Any] | None
    finding_error: str
    finding_attempts: Annotated[int, operator.add]
    stopped_by: str  # "" or which budget ended the research


class ToolTask(TypedDict, total=False):
    call: dict[str, Any]
    scope: str  # the run's archive: where fetch_url files pages and recall searches
    corpus: str  # the tenant's documents: where corpus_search searches; absent means "corpus"
    domains: dict[str, Any] | None  # the run's domain policy, which web_search and fetch_url apply
    tenant: str  # whose run, for the MCP servers enabled for it
    library: str  # the tenant's library, searched too when present
    refusal: str
    refusal_type: str  # the typed error the model reads for a refused call


class ResearcherNodes(Protocol):
    """What the worker binds into the graph (activities/researcher/nodes.py)."""

    async def model(self, state: ResearcherState) -> dict[str, Any]: ...
    async def finding(self, state: ResearcherState) -> dict[str, Any]: ...
    async def web_search(self, task: ToolTask) -> dict[str, Any]: ...
    async def fetch_url(self, task: ToolTask) -> dict[str, Any]: ...
    async def corpus_search(self, task: ToolTask) -> dict[str, Any]: ...
    async def recall(self, task: ToolTask) -> dict[str, Any]: ...
    async def mcp(self, task: ToolTask) -> dict[str, Any]: ...


def budget_spent(state: ResearcherState) -> str:
    limits = state["limits"]
    if state.get("tool_calls", 0) >= limits["tool_calls"]:
        return "tool calls"
    if state.get("tokens", 0) >= limits["tokens"]:
        return "tokens"
    return ""


async def after_model(state: ResearcherState) -> Any:
    last = state["messages"][-1]
    calls = last.get("tool_calls") or []
    if not calls or budget_spent(state):
        return NODE_FINDING
    remaining = state["limits"]["tool_calls"] - state.get("tool_calls", 0)
    domains = state.get("domains")
    policy = DomainPolicy.model_validate(domains) if domains else None
    sends = []
    for i, call in enumerate(calls):
        refusal, kind = "", errors.TOOL_REFUSED
        if call.get("error"):
            refusal, kind = (
                f"the call's arguments are not valid JSON: {call['error']}",
                errors.TOOL_BAD_ARGUMENTS,
            )
        elif call.get("name") not in state.get("offered", []):
            refusal = f"there is no tool named {call.get('name')!r} here; use one of {state.get('offered')}"
        elif i >= remaining:
            refusal = "the step's tool-call budget is spent; write up what you have"
        elif policy is not None and call["name"] == TOOL_FETCH_URL:
            # Refused here, before any activity: the model reads why and picks another source. The
            # activity checks again on every redirect hop.
            url = (call.get("args") or {}).get("url")
            blocked = policy.refusal(url) if isinstance(url, str) and url.strip() else None
            if blocked:
                refusal, kind = blocked, errors.DOMAIN_BLOCKED
        # Every MCP tool (mcp__<server>__<tool>, offered by the model node) is one node: researcher.mcp.
        target = NODE_REFUSE if refusal else NODE_MCP if split_name(call["name"]) else call["name"]
        task = ToolTask(
            call=call,
            scope=state.get("scope", ""),
            corpus=state.get("corpus", DEFAULT_CORPUS_SCOPE),
            domains=domains,
            tenant=state.get("tenant", ""),
            refusal=refusal,
            refusal_type=kind,
        )
        if state.get("library"):  # Only then: tasks of runs without it stay exactly as they were.
            task["library"] = state["library"]
        sends.append(Send(target, task))
    return sends


async def after_memory(state: ResearcherState) -> str:
    return NODE_FINDING if budget_spent(state) else NODE_MODEL


async def after_finding(state: ResearcherState) -> str:
    if state.get("finding") or state.get("finding_attempts", 0) >= FINDING_ATTEMPTS:
        return END
    return NODE_FINDING


async def memory(state: ResearcherState) -> dict[str, Any]:
    changed, sources = remember(
        state["messages"], state.get("sources", []), state["limits"]["context_tokens"]
    )
    return {"messages": changed, "sources": sources, "stopped_by": budget_spent(state)}


def tool_answer(task: ToolTask, result: dict[str, Any]) -> dict[str, Any]:
    """A tool node's state update: the answer to one call (the memory node renders `result`), and one
    call counted against the step's budget."""
    call = task["call"]
    message = {
        "id": f"tool-{call['id']}",
        "role": "tool",
        "tool_call_id": call["id"],
        "name": call.get("name", ""),
        "result": result,
    }
    return {"messages": [message], "tool_calls": 1}


async def refuse(task: ToolTask) -> dict[str, Any]:
    """A call that will not run still gets an answer: the model's API requires one per call."""
    kind = task.get("refusal_type") or errors.TOOL_REFUSED
    return tool_answer(task, {"kind": "error", "type": kind, "message": task["refusal"]})


def _step_title(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    state = args[0] if args else kwargs.get("state", {})
    return str(state.get("title") or "research step") if isinstance(state, dict) else "research step"


def _model_summary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return f"researcher: {_step_title(args, kwargs)}"[:200]


def _finding_summary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return f"finding: {_step_title(args, kwargs)}"[:200]


def _tool_summary(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    task = args[0] if args else kwargs.get("task", {})
    call = task.get("call", {}) if isinstance(task, dict) else {}
    detail = " ".join(str(v) for v in (call.get("args") or {}).values())
    return f"{call.get('name', 'tool')}: {detail}"[:200]


def build_graph(nodes: ResearcherNodes, *, llm_task_queue: str | None = None) -> StateGraph:
    """The graph, with each activity node's timeouts and retry policy in its metadata.

    `llm_task_queue` is where the model and finding nodes run: the worker passes its LLM queue, so
    these calls share the one rate limit with `llm.chat`. None keeps them on the workflow's own queue
    (replay, which never schedules anything, needs no queue)."""
    llm: dict[str, Any] = {
        "execute_in": "activity",
        "start_to_close_timeout": LLM_START_TO_CLOSE,
        "schedule_to_close_timeout": LLM_SCHEDULE_TO_CLOSE,
        "heartbeat_timeout": LLM_HEARTBEAT,
        "retry_policy": LLM_RETRY,
    }
    if llm_task_queue is not None:
        llm["task_queue"] = llm_task_queue
    tool = {
        "execute_in": "activity",
        "start_to_close_timeout": TOOL_START_TO_CLOSE,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "retry_policy": TOOL_RETRY,
        "summary_fn": _tool_summary,
    }
    tools: dict[str, Any] = {
        TOOL_WEB_SEARCH: nodes.web_search,
        TOOL_FETCH_URL: nodes.fetch_url,
        TOOL_CORPUS_SEARCH: nodes.corpus_search,
        TOOL_RECALL: nodes.recall,
    }
    assert set(tools) == set(RESEARCHER_TOOLS)
    # Typed loosely: tool nodes take a Send payload (ToolTask), not the state, which LangGraph allows.
    graph: StateGraph[Any, Any, Any, Any] = StateGraph(ResearcherState)
    graph.add_node(NODE_MODEL, nodes.model, metadata={**llm, "summary_fn": _model_summary})
    graph.add_node(NODE_FINDING, nodes.finding, metadata={**llm, "summary_fn": _finding_summary})
    for name, fn in tools.items():
        graph.add_node(name, fn, metadata=dict(tool))
    graph.add_node(
        NODE_MCP, cast(Any, nodes.mcp), metadata={**tool, "start_to_close_timeout": MCP_START_TO_CLOSE}
    )
    graph.add_node(NODE_REFUSE, cast(Any, refuse), metadata={"execute_in": "workflow"})
    graph.add_node(NODE_MEMORY, memory, metadata={"execute_in": "workflow"})
    graph.add_edge(START, NODE_MODEL)
    graph.add_conditional_edges(NODE_MODEL, after_model, [*tools, NODE_MCP, NODE_REFUSE, NODE_FINDING])
    for name in [*tools, NODE_MCP, NODE_REFUSE]:
        graph.add_edge(name, NODE_MEMORY)
    graph.add_conditional_edges(NODE_MEMORY, after_memory, [NODE_MODEL, NODE_FINDING])
    graph.add_conditional_edges(NODE_FINDING, after_finding, [NODE_FINDING, END])
    return graph


# Compiling is costly (LangGraph reads every node function's bytecode when it compiles), and a
# compiled graph holds no state of an invocation, so each graph object is compiled once and every run
# shares the result. It is kept on the graph object itself, so it lives
# exactly as long as the worker that registered that graph.
_COMPILED_ATTRIBUTE = "_cairn_compiled"
_COMPILING = threading.Lock()  # workflows run on several threads of the worker


def compiled(graph: StateGraph[Any, Any, Any, Any]) -> Any:
    """`graph.compile()`, once per graph object: the same graph gives the same compiled graph."""
    with _COMPILING:
        done = getattr(graph, _COMPILED_ATTRIBUTE, None)
        if done is None:
            done = graph.compile()
            setattr(graph, _COMPILED_ATTRIBUTE, done)
        return done


def recursion_limit(limits: Limits) -> int:
    """LangGraph's superstep cap: each round is model, tools, memory; the finding writer may retry."""
    return 3 * (limits["tool_calls"] + 2) + FINDING_ATTEMPTS + 5

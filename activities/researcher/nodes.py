"""The researcher graph's activity nodes: its model turn, its tools, and its finding writer.

workflows/researcher/graph.py lays out the graph; the temporalio-langgraph plugin runs each method
here as an activity named `researcher.<node>` on the worker that built this object, which holds the
LLM client, the search backends, the page fetcher and the corpus. Keys and clients therefore never
enter a node's input or result, and so never enter history.

Tool failures: a retryable one (a 503, a timeout) raises, and Temporal retries the activity; on the
last attempt, or for a failure that retrying cannot help (a refused address, a 404), the tool answers
with a typed error the model reads and works around. That is an explicit "no result", never data that
looks like success. A fetched page is also filed in the run's archive, so `recall` can search its full
text after working memory has let it go.

Scopes come from the tool task the workflow built, never from the model's arguments: `corpus_search`
reads the run's tenant's documents only (`task["corpus"]`; a task from before tenants has none and
means the default tenant's, "corpus"), `recall` the run's own archive.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.corpus import Corpus
from activities.fetch import PageFetcher
from activities.heartbeat import with_heartbeats
from activities.llm import LLMActivities, to_openai
from activities.mcp_tools import McpTools
from activities.researcher.finding import notes_of, parse_finding
from activities.run_events import tell_tool_call
from activities.web_search import WebSearch
from common import errors
from common.domains import DomainPolicy
from common.names import TOOL_CORPUS_SEARCH, TOOL_FETCH_URL, TOOL_RECALL, TOOL_WEB_SEARCH
from common.structured import finding_model, output_spec
from common.tenancy import DEFAULT_CORPUS_SCOPE, DEFAULT_TENANT, is_document_scope, is_library_scope
from workflows.calls import TOOL_ATTEMPTS
from workflows.prompts import finding_messages
from workflows.researcher.graph import ResearcherState, ToolTask, tool_answer

PASSAGES_PER_SEARCH = 5


def _spec(name: str, description: str, **params: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": "string", "description": v} for k, v in params.items()},
                "required": list(params),
            },
        },
    }


TOOL_SPECS = {
    TOOL_WEB_SEARCH: _spec(
        TOOL_WEB_SEARCH, "Search the web. Returns titles, URLs and snippets.", query="what to search for"
    ),
    TOOL_FETCH_URL: _spec(
        TOOL_FETCH_URL, "Read a web page in full (its main text).", url="the http(s) URL to read"
    ),
    TOOL_CORPUS_SEARCH: _spec(
        TOOL_CORPUS_SEARCH,
        "Search the user's own documents (ranked passages with their document and position).",
        query="words to look for",
    ),
    TOOL_RECALL: _spec(
        TOOL_RECALL,
        "Search the full texts of pages read earlier in this research run, including parts no "
        "longer shown to you.",
        query="words to look for",
    ),
}


def _arg(task: ToolTask, name: str) -> str:
    value = (task["call"].get("args") or {}).get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApplicationError(
            f"the call needs a non-empty '{name}' argument",
            type=errors.TOOL_BAD_ARGUMENTS,
            non_retryable=True,
        )
    return value.strip()


class ResearcherNodes:
    """Built once per worker; its methods are the graph's activity nodes (see worker.py)."""

    def __init__(
        self,
        llm: LLMActivities,
        search: WebSearch,
        fetcher: PageFetcher,
        corpus: Corpus,
        mcp: McpTools | None = None,
    ) -> None:
        self._llm = llm
        self._search = search
        self._fetcher = fetcher
        self._corpus = corpus
        self._mcp = mcp

    def offered(self) -> list[str]:
        tools = [TOOL_CORPUS_SEARCH, TOOL_FETCH_URL, TOOL_RECALL]
        return ([TOOL_WEB_SEARCH] if self._search.available() else []) + tools

    async def model(self, state: ResearcherState) -> dict[str, Any]:
        offered = self.offered()
        specs = [TOOL_SPECS[name] for name in offered]
        if self._mcp is not None:  # The operator's MCP servers enabled for this run's tenant.
            for tool in await self._mcp.tools_for(state.get("tenant") or DEFAULT_TENANT):
                offered.append(tool.exposed)
                specs.append(tool.spec())
        turn = state.get("turn", 0)
        done = await self._llm.complete(
            "researcher",
            [to_openai(m) for m in state["messages"]],
            f"researcher turn {turn + 1}",
            tools=specs,
        )
        message = {
            "id": f"ai-{turn}",
            "role": "assistant",
            "content": done.text,
            "tool_calls": done.tool_calls,
        }
        return {
            "messages": [message],
            "offered": offered,
            "turn": turn + 1,
            "tokens": done.input_tokens + done.output_tokens,
            "usage": [done.record()],
        }

    async def finding(self, state: ResearcherState) -> dict[str, Any]:
        sources = state.get("sources", [])
        listing = "\n".join(
            f"[{s['id']}] {s['title'] or s['url'] or s['path']} ({s['via']})" for s in sources
        )
        # A state begun before it carried the task names it by the opening message's id.
        task = state.get("task") or next(m["content"] for m in state["messages"] if m["id"] == "task")
        messages = finding_messages(task, notes_of(state), listing, state.get("finding_error", ""))
        known = [s["id"] for s in sources]
        done = await self._llm.complete(
            "researcher",
            [to_openai(m) for m in messages],
            "researcher: write finding",
            output=output_spec("finding", finding_model(tuple(known))),
        )
        update: dict[str, Any] = {
            "usage": [done.record()],
            "tokens": done.input_tokens + done.output_tokens,
            "finding_attempts": 1,
        }
        try:
            update["finding"] = parse_finding(done.text, known)
        except ValueError as err:
            activity.logger.warning("malformed finding: %s", err)
            update["finding_error"] = str(err)
        return update

    # -- tools -----------------------------------------------------------------------------------

    async def web_search(self, task: ToolTask) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            found = await self._search.search(_arg(task, "query"), domains=_policy(task))
            return {"kind": "search", **found.model_dump()}

        return await _answered(task, await _typed_failures(run))

    async def fetch_url(self, task: ToolTask) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            page = await self._fetcher.fetch(_arg(task, "url"), domains=_policy(task))
            if task["scope"]:
                await self._corpus.ingest(page.final_url, page.title, page.text, scope=task["scope"])
            return {"kind": "page", **page.model_dump()}

        return await _answered(task, await _typed_failures(run))

    async def corpus_search(self, task: ToolTask) -> dict[str, Any]:
        scope = task.get("corpus") or DEFAULT_CORPUS_SCOPE
        if not is_document_scope(scope):  # Only the workflow writes it; anything else is a bug, loudly.
            raise ApplicationError(
                f"corpus_search was given {scope[:80]!r}, which is not a tenant's documents",
                type=errors.INVALID_INPUT,
                non_retryable=True,
            )
        return await _answered(task, await _typed_failures(lambda: self._passages(task, scope)))

    async def recall(self, task: ToolTask) -> dict[str, Any]:
        return await _answered(task, await _typed_failures(lambda: self._passages(task, task["scope"])))

    async def mcp(self, task: ToolTask) -> dict[str, Any]:
        """One call of an operator's MCP tool, on a session opened here (activities/mcp_tools.py)."""

        async def run() -> dict[str, Any]:
            call = task["call"]
            args = call.get("args")
            if not isinstance(args, dict):
                raise ApplicationError(
                    "the call's arguments must be a JSON object",
                    type=errors.TOOL_BAD_ARGUMENTS,
                    non_retryable=True,
                )
            if self._mcp is None:
                raise ApplicationError(
                    "this worker has no MCP servers", type=errors.MCP_UNKNOWN_TOOL, non_retryable=True
                )
            text = await self._mcp.call(str(call["name"]), args, task.get("tenant") or DEFAULT_TENANT)
            return {"kind": "mcp", "tool": call["name"], "text": text}

        return await _answered(task, await _typed_failures(run))

    async def _passages(self, task: ToolTask, scope: str) -> dict[str, Any]:
        query = _arg(task, "query")
        found = await self._corpus.search(query, limit=PASSAGES_PER_SEARCH, scope=scope) if scope else []
        passages = [p.model_dump() for p in found]
        library = task.get("library") or ""
        if library:
            if not is_library_scope(library):  # Only the workflow writes it, from the run's tenant.
                raise ApplicationError(
                    f"a tool task was given {library[:80]!r}, which is not a tenant's library",
                    type=errors.INVALID_INPUT,
                    non_retryable=True,
                )
            shelved = await self._corpus.search(query, limit=PASSAGES_PER_SEARCH, scope=library)
            passages += [{**p.model_dump(), "library": True} for p in shelved]
        return {
            "kind": "passages",
            "query": query,
            "archive": not is_document_scope(scope),
            "passages": passages,
        }


def _policy(task: ToolTask) -> DomainPolicy | None:
    """The run's domain policy, as the workflow put it into the task (never from the model's arguments)."""
    domains = task.get("domains")
    return DomainPolicy.model_validate(domains) if domains else None


async def _answered(task: ToolTask, result: dict[str, Any]) -> dict[str, Any]:
    """The tool's answer for the graph, once the run has been told of the call (activities/run_events.py)."""
    call = task["call"]
    args = call.get("args") or {}
    detail = str(args.get("query") or args.get("url") or "") if isinstance(args, dict) else ""
    outcome = str(result.get("type") or "error") if result.get("kind") == "error" else "ok"
    await tell_tool_call(str(call.get("name", "")), detail, outcome)
    return tool_answer(task, result)


async def _typed_failures(run: Any) -> dict[str, Any]:
    """Run a tool; a failure retrying cannot help, or one on the last attempt, becomes a typed error
    result for the model. Anything else raises, and Temporal retries the activity."""
    try:
        # Heartbeats tell Temporal this worker is alive; a dead one's call moves elsewhere in seconds.
        result: dict[str, Any] = await with_heartbeats(run())
        return result
    except ApplicationError as err:
        if not err.non_retryable and activity.info().attempt < TOOL_ATTEMPTS:
            raise
        activity.logger.warning("tool failed for good (%s): %s", err.type, err.message)
        return {"kind": "error", "type": err.type or errors.TOOL_FAILED, "message": err.message}

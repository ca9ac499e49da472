"""The reference arm: Cairn's research shape as most people would otherwise build it, a LangGraph
`StateGraph` checkpointed to SQLite by `AsyncSqliteSaver`, all in one process.

Why this exists: the benchmarks state what durability costs and what it buys, so every sitting runs
this beside Cairn and bare Temporal. It makes the same calls with the same client, prompts and
schemas as Cairn (a plan; each step a researcher subgraph of model turn, `corpus_search`, model turn
and finding; a review; a report), checkpointing every super-step of the run and of each step, with
`max_concurrency` steps at once. What it does not have is what Temporal gives Cairn: a run survives
this process only if someone re-invokes its thread, its calls are not retried on another machine, and
there is no history, no signals, no Web UI. Code of our own, built from Cairn's prompts and models.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Send

from activities.corpus import Corpus
from activities.researcher.nodes import TOOL_SPECS
from common.models import ChatMessage, Finding
from common.names import TOOL_CORPUS_SEARCH
from common.structured import finding_model, output_spec, plan_model, review_model, validated
from workflows import prompts


class RunState(TypedDict, total=False):
    question: str
    steps: list[dict[str, str]]
    findings: Annotated[list[dict[str, Any]], operator.add]
    report: str


class StepState(TypedDict, total=False):
    question: str
    title: str
    description: str
    messages: Annotated[list[BaseMessage], add_messages]
    turns: int
    findings: Annotated[list[dict[str, Any]], operator.add]


def to_langchain(message: ChatMessage | dict[str, Any]) -> BaseMessage:
    m = message.model_dump() if isinstance(message, ChatMessage) else message
    if m["role"] == "system":
        return SystemMessage(content=m["content"])
    return HumanMessage(content=m["content"])


def _as_messages(messages: list[ChatMessage]) -> list[BaseMessage]:
    return [to_langchain(m) for m in messages]


class Reference:
    """One compiled graph per process, as an application would keep it."""

    def __init__(self, base_url: str, corpus: Corpus, checkpoints: Path, max_steps: int) -> None:
        self._llm = ChatOpenAI(model="gpt-4o-mini", api_key="sk-bench", base_url=base_url, max_retries=2)  # type: ignore[arg-type]
        self._corpus = corpus
        self._checkpoints = checkpoints
        self._max_steps = max_steps
        self._tools = [TOOL_SPECS[TOOL_CORPUS_SEARCH]]

    def _json(self, name: str, model: Any) -> Any:
        spec = output_spec(name, model)
        schema = {"name": spec.name, "schema": spec.json_schema, "strict": spec.strict}
        return self._llm.bind(response_format={"type": "json_schema", "json_schema": schema})

    # -- the run --------------------------------------------------------------------------------

    async def plan(self, state: RunState) -> RunState:
        model = plan_model(self._max_steps)
        reply = await self._json("plan", model).ainvoke(
            _as_messages(prompts.plan_messages(state["question"], self._max_steps))
        )
        draft = validated(model, str(reply.content))
        return {"steps": [{"title": s.title, "description": s.description} for s in draft.steps]}

    @staticmethod
    def fan_out(state: RunState) -> list[Send]:
        return [
            Send(
                "step", {"question": state["question"], "title": s["title"], "description": s["description"]}
            )
            for s in state["steps"]
        ]

    async def review(self, state: RunState) -> RunState:
        findings = [Finding(step_id=f"s{i}", **f) for i, f in enumerate(state["findings"], 1)]
        model = review_model(self._max_steps, ())
        reply = await self._json("review", model).ainvoke(
            _as_messages(
                prompts.review_messages(state["question"], _plan_of(state), findings, self._max_steps)
            )
        )
        validated(model, str(reply.content))
        return {}

    async def report(self, state: RunState) -> RunState:
        findings = [Finding(step_id=f"s{i}", **f) for i, f in enumerate(state["findings"], 1)]
        reply = await self._llm.ainvoke(_as_messages(prompts.report_messages(state["question"], findings)))
        return {"report": str(reply.content)}

    # -- a step: the researcher ------------------------------------------------------------------

    async def model(self, state: StepState) -> StepState:
        messages = state.get("messages") or [
            to_langchain(m)
            for m in prompts.researcher_messages(
                prompts.step_task(state["question"], state["title"], state["description"], "")
            )
        ]
        reply = await self._llm.bind_tools(self._tools).ainvoke(messages)
        fresh = [] if state.get("messages") else messages
        return {"messages": [*fresh, reply], "turns": state.get("turns", 0) + 1}

    @staticmethod
    def after_model(state: StepState) -> str:
        last = state["messages"][-1]
        return (
            "tools" if isinstance(last, AIMessage) and last.tool_calls and state["turns"] < 3 else "finding"
        )

    async def tools(self, state: StepState) -> StepState:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        answers: list[BaseMessage] = []
        for call in last.tool_calls:
            found = await self._corpus.search(str(call["args"].get("query", "")), limit=5, scope="corpus")
            text = "\n".join(f"{p.title}: {p.text[:300]}" for p in found) or "(no passages)"
            answers.append(ToolMessage(content=text, tool_call_id=call["id"]))
        return {"messages": answers}

    async def finding(self, state: StepState) -> StepState:
        task = prompts.step_task(state["question"], state["title"], state["description"], "")
        notes = "\n".join(f"{m.type}: {m.content}" for m in state["messages"][2:])
        asked = prompts.finding_messages(task, notes, "")
        model = finding_model(())
        reply = await self._json("finding", model).ainvoke(
            [SystemMessage(content=asked[0].content), HumanMessage(content=asked[1].content)]
        )
        draft = validated(model, str(reply.content))
        return {"findings": [{"title": state["title"], "summary": draft.summary}]}

    def graph(self) -> StateGraph:
        step = StateGraph(StepState)
        step.add_node("model", self.model)
        step.add_node("tools", self.tools)
        step.add_node("finding", self.finding)
        step.add_edge(START, "model")
        step.add_conditional_edges("model", self.after_model, ["tools", "finding"])
        step.add_edge("tools", "model")
        step.add_edge("finding", END)
        researcher = step.compile()

        async def one_step(state: StepState, config: RunnableConfig) -> RunState:
            # The step's own graph, checkpointed in its namespace of the run's thread; only its
            # finding goes back to the run.
            final = await researcher.ainvoke(state, config)
            return {"findings": final["findings"]}

        run = StateGraph(RunState)
        run.add_node("plan", self.plan)
        run.add_node("step", one_step)
        run.add_node("review", self.review)
        run.add_node("report", self.report)
        run.add_edge(START, "plan")
        run.add_conditional_edges("plan", self.fan_out, ["step"])
        run.add_edge("step", "review")
        run.add_edge("review", "report")
        run.add_edge("report", END)
        return run

    async def run(self, thread: str, question: str, parallel: int) -> str:
        async with AsyncSqliteSaver.from_conn_string(str(self._checkpoints)) as saver:
            app = self.graph().compile(checkpointer=saver)
            final = await app.ainvoke(
                {"question": question, "findings": []},
                config={"configurable": {"thread_id": thread}, "max_concurrency": parallel},
            )
        return str(final["report"])


def _plan_of(state: RunState) -> Any:
    from common.models import Plan, PlanStep

    steps = [
        PlanStep(id=f"s{i}", title=s["title"], description=s["description"], status="done")
        for i, s in enumerate(state["steps"], 1)
    ]
    return Plan(version=1, steps=steps)

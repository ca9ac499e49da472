"""ResearcherWorkflow: one research step, carried out by the researcher LangGraph graph.

The graph (workflows/researcher_graph.py) runs through the temporalio-langgraph plugin: its model,
tool and finding-writer nodes are activities, its control flow replays here. A crash mid-step loses
nothing that had finished: completed model and tool calls are in history and are not made again.
This workflow turns the graph's final state into a Finding: the summary, the claims, only the sources
the claims cite, and the usage of every model call.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from temporalio.langgraph import graph

    from common.models import Claim, Finding, Source, StepInput, Usage
    from common.names import RESEARCHER_GRAPH, RESEARCHER_WORKFLOW
    from workflows import prompts
    from workflows.inputs import one_input
    from workflows.researcher_graph import (
        FINDING_ATTEMPTS,
        Limits,
        ResearcherState,
        compiled,
        recursion_limit,
    )

ERR_MALFORMED_FINDING = "MalformedFinding"


# Not sandboxed. The sandbox guards only code it imports itself, and the step's logic (the graph's
# routers and working memory, LangGraph) must be passed through it anyway, so here it guarded a few
# lines of glue while costing ~8 ms of worker CPU per LLM call (bench/orchestration_overhead.py:
# 31-37 ms unsandboxed against 39-45 ms sandboxed): re-importing this module into a fresh sandbox for
# every step, and entering the sandbox for every activation and every payload. Determinism here is
# kept by the rule of workflows/ (no I/O, no clocks, no randomness) and checked by replaying committed
# histories in CI (tests/test_replay.py), as for every workflow.
@workflow.defn(name=RESEARCHER_WORKFLOW, sandboxed=False)
class ResearcherWorkflow:
    @workflow.run
    async def run(self, *inputs: Any) -> Finding:
        task = one_input(RESEARCHER_WORKFLOW, inputs, StepInput)
        step = task.step
        limits = Limits(tool_calls=task.tool_calls, tokens=task.tokens, context_tokens=task.context_tokens)
        start: ResearcherState = {
            "messages": prompts.researcher_messages(
                task.question, step.title, step.description, task.context
            ),
            "sources": [],
            "usage": [],
            "tokens": 0,
            "tool_calls": 0,
            "offered": [],
            "limits": limits,
            "scope": task.archive_scope,
            "turn": 0,
            "finding": None,
            "finding_error": "",
            "finding_attempts": 0,
            "stopped_by": "",
        }
        app = compiled(graph(RESEARCHER_GRAPH))
        final = await app.ainvoke(start, config={"recursion_limit": recursion_limit(limits)})
        usage = _usage(final)
        written = final.get("finding")
        if not written:
            raise ApplicationError(
                f"the researcher wrote a malformed finding {FINDING_ATTEMPTS} times; "
                f"last problem: {final.get('finding_error')}",
                type=ERR_MALFORMED_FINDING,
                non_retryable=True,
            )
        claims = [Claim(**c) for c in written["claims"]]
        cited = {sid for c in claims for sid in c.source_ids}
        sources = [
            Source(id=s["id"], title=s["title"], url=s["url"], path=s["path"], via=s["via"])
            for s in final.get("sources", [])
            if s["id"] in cited
        ]
        summary = written["summary"]
        if final.get("stopped_by"):
            summary += f"\n\n_(Research stopped early: the step's {final['stopped_by']} budget ran out.)_"
        return Finding(
            step_id=step.id, title=step.title, summary=summary, claims=claims, sources=sources, usage=usage
        )


def _usage(final: dict[str, Any]) -> Usage:
    usage = Usage()
    for call in final.get("usage", []):
        usage.add(
            Usage(
                llm_calls=1,
                input_tokens=call["input_tokens"],
                output_tokens=call["output_tokens"],
                cost_usd=call["cost_usd"],
            )
        )
    return usage

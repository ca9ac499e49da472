"""ResearcherWorkflow: one research step, carried out by the researcher LangGraph graph.

The graph (workflows/researcher/graph.py) runs through the temporalio-langgraph plugin: its model,
tool and finding-writer nodes are activities, its control flow replays here. A crash mid-step loses
nothing that had finished: completed model and tool calls are in history and are not made again.
This workflow turns the graph's final state into a Finding: the summary, the claims, only the sources
the claims cite, and the usage of every model call.

Whose documents the step may search is decided here, from the step's tenant, and travels in the graph's
state to every `corpus_search` call: the model never names a scope, so no prompt can widen it.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from common import errors

with workflow.unsafe.imports_passed_through():
    from temporalio.langgraph import graph

    from common.models import Claim, Finding, Source, StepInput, Usage
    from common.names import RESEARCHER_GRAPH, RESEARCHER_WORKFLOW
    from common.tenancy import corpus_scope, library_scope
    from workflows import prompts
    from workflows.inputs import one_input
    from workflows.researcher.graph import (
        FINDING_ATTEMPTS,
        Limits,
        ResearcherState,
        compiled,
        recursion_limit,
    )


# Not sandboxed. The sandbox guards only code it imports itself, and the step's logic (the graph's
# routers and working memory, LangGraph) must be passed through it anyway, so here it would guard a
# few lines of glue at the price of re-importing this module for every step and entering the sandbox
# for every activation and every payload (docs/benchmarks.md has the cost). Determinism here is kept by
# the rule of workflows/ (no I/O, no clocks, no randomness) and checked by replaying committed
# histories in CI (tests/test_replay.py), as for every workflow.
@workflow.defn(name=RESEARCHER_WORKFLOW, sandboxed=False)
class ResearcherWorkflow:
    @workflow.run
    async def run(self, *inputs: Any) -> Finding:
        task = one_input(RESEARCHER_WORKFLOW, inputs, StepInput)
        step = task.step
        try:
            corpus = corpus_scope(task.tenant)  # Pure: the same scope on every replay.
            library = library_scope(task.tenant) if task.library else ""
        except ValueError as err:
            raise ApplicationError(str(err), type=errors.INVALID_INPUT, non_retryable=True) from None
        limits = Limits(tool_calls=task.tool_calls, tokens=task.tokens, context_tokens=task.context_tokens)
        assignment = prompts.step_task(task.question, step.title, step.description, task.context)
        start: ResearcherState = {
            "title": step.title,
            "task": assignment,
            "messages": prompts.researcher_messages(assignment),
            "sources": [],
            "usage": [],
            "tokens": 0,
            "tool_calls": 0,
            "offered": [],
            "limits": limits,
            "scope": task.archive_scope,
            "corpus": corpus,
            "domains": task.domains.model_dump(mode="json") if task.domains else None,
            "tenant": task.tenant,
            "library": library,
            "turn": 0,
            "finding": None,
            "finding_error": "",
            "finding_attempts": 0,
            "stopped_by": "",
        }
        app = compiled(graph(RESEARCHER_GRAPH))
        final = await app.ainvoke(start, config={"recursion_limit": recursion_limit(limits)})
        usage = Usage.of_calls(final.get("usage", []))
        written = final.get("finding")
        if not written:
            raise ApplicationError(
                f"the researcher wrote a malformed finding {FINDING_ATTEMPTS} times; "
                f"last problem: {final.get('finding_error')}",
                type=errors.MALFORMED_FINDING,
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

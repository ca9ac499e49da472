"""The workflow sandbox's configuration: which modules workflows may share with the worker process.

Passed-through modules are imported once outside the sandbox instead of re-imported for every workflow
run. Only deterministic, side-effect-free modules belong here; each is listed with its reason.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

PASSED_THROUGH = (
    # Payload models are pydantic; re-importing pydantic per run is slow and it keeps no run state.
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    # Cairn's own data types and names: plain definitions, no I/O at import.
    "common.models",
    "common.names",
    "common.structured",
    "workflows.inputs",
    # Pure helpers of the workflows (prompts, parsing, report framing, UI details): no module state,
    # no I/O. Importing them once instead of into every workflow's sandbox saves ~10 ms per new run.
    "workflows.budget",
    "workflows.calls",
    "workflows.details",
    "workflows.prompts",
    "workflows.reporting",
    # The researcher graph's layout, routers and working memory: pure too. The graph object itself is
    # built on the worker, shared with every run by the LangGraph plugin (which passes through langchain
    # and langgraph) and compiled once (researcher_graph.compiled keeps the result on it).
    "workflows.researcher_graph",
    "workflows.researcher_memory",
)


def workflow_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
    )

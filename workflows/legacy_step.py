"""StepWorkflow: carries out one plan step as a child of ResearchWorkflow.

For now a step is one LLM call in the role its kind names (researcher or coder); the researcher and
coder sub-agents replace this with their own child workflows. Deterministic orchestration only.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from common.models import Finding, Role, StepInput, Usage
    from common.names import STEP_WORKFLOW
    from workflows import prompts
    from workflows.calls import chat
    from workflows.inputs import one_input


@workflow.defn(name=STEP_WORKFLOW)
class StepWorkflow:
    @workflow.run
    async def run(self, *inputs: Any) -> Finding:
        task = one_input(STEP_WORKFLOW, inputs, StepInput)
        step = task.step
        usage = Usage()
        role: Role = "coder" if step.kind == "code" else "researcher"
        reply = await chat(
            role,
            prompts.step_messages(task.question, step.kind, step.title, step.description, task.context),
            summary=f"{role}: {step.title}"[:200],
            usage=usage,
        )
        return Finding(step_id=step.id, title=step.title, summary=reply.content, usage=usage)

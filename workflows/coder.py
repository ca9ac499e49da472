"""CoderWorkflow: a coding step. The coder model writes a program, `sandbox.exec` runs it in a locked-down
container, failures go back to the model for a bounded number of fixes, and the step returns a finding
with the program's output and the files it made.

Deterministic orchestration only: model calls and the sandbox run are activities. A failing program is
data the model sees (exit code, stderr, limits hit), not an activity failure; an unavailable sandbox is
an activity failure, and the step fails with its reason. The program's files are kept as the run's
(the parent research run's id, or this workflow's own when started alone) and the run's tenant's.
"""

from __future__ import annotations

import re
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from common.models import Finding, StepInput, Usage
    from common.names import CODER_WORKFLOW
    from common.sandbox_models import (
        ExecResult,
        clip,
    )
    from workflows import prompts
    from workflows.calls import chat, run_code
    from workflows.inputs import one_input

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
OUTPUT_CHARS_FOR_MODEL = 6000  # of each stream
PREVIEW_CHARS_FOR_MODEL = 1000  # of each artifact
DESCRIBE_CHARS = 20_000  # everything the model is shown about one run


def extract_program(reply: str) -> str:
    """The program in the reply's first fenced block; a reply with no fence is taken as code."""
    found = _FENCE.search(reply)
    return (found.group(1) if found else reply).strip()


def describe(result: ExecResult) -> str:
    """What the model reads about a run: the outcome line, the output and the artifacts' first lines,
    at most DESCRIBE_CHARS in all, however much the program printed or left behind."""
    text = result.summary()
    if result.stdout:
        text += f"\nstdout:\n{result.stdout[-OUTPUT_CHARS_FOR_MODEL:]}"
    if result.stderr:
        text += f"\nstderr:\n{result.stderr[-OUTPUT_CHARS_FOR_MODEL:]}"
    previews = [a for a in result.artifacts if a.preview]
    for shown, artifact in enumerate(previews):
        block = f"\n{artifact.name} begins:\n{(artifact.preview or '')[:PREVIEW_CHARS_FOR_MODEL]}"
        if len(text) + len(block) > DESCRIBE_CHARS - 100:  # leaves room for this note
            text += f"\n[{len(previews) - shown} more artifact previews left out]"
            break
        text += block
    return clip(text, DESCRIBE_CHARS)


@workflow.defn(name=CODER_WORKFLOW)
class CoderWorkflow:
    @workflow.run
    async def run(self, *inputs: Any) -> Finding:
        task = one_input(CODER_WORKFLOW, inputs, StepInput)
        step = task.step
        usage = Usage()
        parent = workflow.info().parent
        run_id = parent.workflow_id if parent is not None else workflow.info().workflow_id
        conversation = prompts.code_messages(task.question, step.title, step.description, task.context)
        reply = await chat("coder", conversation, f"write code: {step.title}"[:200], usage)
        result: ExecResult | None = None
        program = ""
        for attempt in range(task.max_code_fixes + 1):
            program = extract_program(reply.content)
            result = await run_code(
                program,
                step.id,
                f"run code: step {step.id}" + (f" (fix {attempt})" if attempt else ""),
                tenant=task.tenant,
                run_id=run_id,
            )
            if result.ok or attempt == task.max_code_fixes:
                break
            conversation = conversation + prompts.code_fix_message(reply.content, describe(result))
            reply = await chat("coder", conversation, f"fix code: {step.title}"[:200], usage)
        assert result is not None
        summary = await chat(
            "coder",
            prompts.code_summary_messages(task.question, step.title, program, describe(result)),
            f"summarize code: {step.title}"[:200],
            usage,
        )
        return Finding(
            step_id=step.id,
            title=step.title,
            summary=summary.content,
            usage=usage,
            artifacts=result.artifacts,
        )

"""The markdown a run shows as its 'current details' in the Temporal Web UI and `temporal workflow describe`.

Pure and deterministic: it is computed inside the workflow from state alone. It always names the phase,
the plan with each step's status, the spend so far and, when the run waits for a person, the exact
command that acts.
"""

from __future__ import annotations

from common.models import Plan, Usage

_MARKS = {"pending": "[ ]", "running": "[~]", "done": "[x]", "failed": "[!]", "skipped": "[-]"}


def render_details(
    workflow_id: str, phase: str, plan: Plan | None, usage: Usage, waiting_for: str | None
) -> str:
    lines = [f"**Phase:** {phase}"]
    if waiting_for and plan is not None:
        lines += [
            "",
            f"**Awaiting {waiting_for}:** `cairn approve {workflow_id}`",
            f'(or `cairn revise {workflow_id} "feedback"`, `cairn edit {workflow_id} plan.json`, '
            f"`cairn abort {workflow_id}`)",
        ]
    if plan is not None:
        lines += ["", f"**Plan v{plan.version}**", ""]
        lines += [
            f"- {_MARKS.get(s.status, '[?]')} `{s.id}` {s.title} ({s.kind}, {s.status})" for s in plan.steps
        ]
    lines += [
        "",
        f"**Spend:** {usage.llm_calls} LLM calls, {usage.input_tokens} input and "
        f"{usage.output_tokens} output tokens",
    ]
    return "\n".join(lines)

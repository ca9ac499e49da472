"""The markdown a run shows as its 'current details' in the Temporal Web UI and `temporal workflow describe`.

Pure and deterministic: it is computed inside the workflow from state alone. It always names the phase,
what the run is doing or waiting for, the plan with each step's status and the spend so far and, when
the run waits for a person, the exact command that acts.
"""

from __future__ import annotations

from common.models import Plan, Usage
from workflows.reporting import md_inline

_MARKS = {"pending": "[ ]", "running": "[~]", "done": "[x]", "failed": "[!]", "skipped": "[-]"}


def _doing(workflow_id: str, phase: str, plan: Plan | None) -> str | None:
    """One line on what the run waits for when no person is needed."""
    if phase == "planning":
        return "the planner, drafting the plan"
    if phase == "researching" and plan is not None:
        running = [s.id for s in plan.steps if s.status == "running"]
        pending = [s.id for s in plan.steps if s.status == "pending"]
        text = f"steps {', '.join(running)} (running)" if running else "the next step"
        return text + (f"; {len(pending)} more queued" if pending else "")
    if phase == "replanning":
        return "the planner, reviewing the findings"
    if phase == "reporting":
        return "the reporter, writing the report"
    if phase in ("done", "aborted"):
        return f"nothing: the {'partial ' if phase == 'aborted' else ''}report is ready, `cairn report {workflow_id}`"
    return None


def render_details(
    workflow_id: str, phase: str, plan: Plan | None, usage: Usage, waiting_for: str | None
) -> str:
    # The id goes inside code spans: anything that could end one, or the line, is left out.
    workflow_id = "".join(c for c in workflow_id if c.isprintable() and c != "`")[:200]
    lines = [f"**Phase:** {phase}"]
    if waiting_for and plan is not None:
        lines += [
            "",
            f"**Awaiting {waiting_for}:** `cairn approve {workflow_id}`",
            f'(or `cairn revise {workflow_id} "feedback"`, `cairn edit {workflow_id} plan.json`, '
            f"`cairn abort {workflow_id}`)",
        ]
    else:
        doing = _doing(workflow_id, phase, plan)
        if doing:
            lines += ["", f"**Waiting for:** {doing}"]
    if plan is not None:
        lines += ["", f"**Plan v{plan.version}**", ""]
        # Titles come from the planner model or a person: the Web UI renders this as markdown.
        lines += [
            f"- {_MARKS.get(s.status, '[?]')} `{md_inline(s.id, 20).replace('`', '')}` {md_inline(s.title)} "
            f"({s.kind}, {s.status})"
            for s in plan.steps
        ]
    lines += ["", f"**Spend:** {usage.describe()}"]
    return "\n".join(lines)

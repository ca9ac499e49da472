"""The plan editor's rows: read from a plan, changed by a form's buttons, checked, and saved as the
plan-edit update's steps; the run's refusal placed beside the step it names.

Why this exists: reordering, adding and deleting steps work as plain form posts (no script needed,
every control a real button with a name): each such post returns the draft with the change made and
nothing saved, and only Save plan sends the whole list through the API's plan-edit route, where the
workflow's validator has the last word.

Must never: save anything but on an explicit save; lose what a person typed into another row when
one row is moved or deleted.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData

from client.web.base import reasons
from common.models import MAX_STEPS, Plan, StepSpec

Row = dict[str, Any]
_STEP_ID = re.compile(r"\bstep (?:id )?([A-Za-z0-9_-]{1,20})\b")


def rows_of(plan: Plan | None) -> list[Row]:
    if plan is None:
        return []
    return [
        {"id": s.id, "title": s.title, "kind": s.kind, "description": s.description, "error": None}
        for s in plan.steps
    ]


def _rows_from(form: FormData) -> list[Row]:
    try:
        count = min(int(str(form.get("rows") or "0")), MAX_STEPS + 1)
    except ValueError:
        count = 0
    rows = []
    for i in range(count):
        kind = str(form.get(f"kind_{i}") or "research")
        rows.append(
            {
                "id": str(form.get(f"id_{i}") or "")[:20] or None,
                "title": str(form.get(f"title_{i}") or ""),
                "kind": kind if kind in ("research", "code") else "research",
                "description": str(form.get(f"description_{i}") or ""),
                "error": None,
            }
        )
    return rows


def apply(form: FormData) -> tuple[list[Row], str]:
    """The rows as the form has them, after the change its button asks for; and that button's op."""
    rows = _rows_from(form)
    op = str(form.get("op") or "save")
    action, _, where = op.partition(":")
    index = int(where) if where.isdigit() else -1
    if action == "add" and len(rows) < MAX_STEPS:
        rows.append({"id": None, "title": "", "kind": "research", "description": "", "error": None})
    elif action == "delete" and 0 <= index < len(rows):
        del rows[index]
    elif action == "up" and 0 < index < len(rows):
        rows[index - 1], rows[index] = rows[index], rows[index - 1]
    elif action == "down" and 0 <= index < len(rows) - 1:
        rows[index + 1], rows[index] = rows[index], rows[index + 1]
    elif action != "save":
        action = "noop"
    return rows, "save" if action == "save" else action


def specs(rows: list[Row]) -> tuple[list[StepSpec], dict[int, str], str | None]:
    """The rows as the plan-edit's steps, or the reasons, by row, that some cannot be."""
    if not rows:
        return [], {}, "A plan needs at least one step."
    steps: list[StepSpec] = []
    errors: dict[int, str] = {}
    for i, r in enumerate(rows):
        try:
            steps.append(StepSpec(id=r["id"], title=r["title"], kind=r["kind"], description=r["description"]))
        except ValidationError as err:
            errors[i] = reasons(err)
    return steps, errors, None


def reason_of(reason: str, rows: list[Row]) -> tuple[dict[int, str], str | None]:
    """The run's refusal beside the step it names (`step id s3 …`), or for the plan as a whole."""
    match = _STEP_ID.search(reason)
    if match:
        for i, row in enumerate(rows):
            if row["id"] == match.group(1):
                return {i: reason}, None
    return {}, reason


def with_errors(rows: list[Row], errors: dict[int, str]) -> list[Row]:
    return [{**row, "error": errors.get(i)} for i, row in enumerate(rows)]

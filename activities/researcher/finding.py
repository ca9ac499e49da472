"""The researcher's finding: the notes it is written from, and the check of what the model wrote.

A finding is a summary and claims, each citing only sources the step saw; the model that validates it is
the one whose JSON schema the finding writer's request carried (common/structured.py), with the step's
source ids as an enum. Pure functions: the finding node (nodes.py) calls them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from common.structured import finding_model, validated
from workflows.researcher.graph import ResearcherState
from workflows.researcher.memory import estimate_tokens

NOTES_TOKENS = 12_000  # the finding writer's view of the notes


def parse_finding(text: str, known: Sequence[str]) -> dict[str, Any]:
    """The finding, checked by the model its request's schema came from: a summary, and claims citing
    only the sources the step saw (`known`, in the order the step met them)."""
    draft = validated(finding_model(tuple(known)), text)
    return {
        "summary": draft.summary,
        "claims": [{"text": c.text, "source_ids": list(c.sources)} for c in draft.claims],
    }


def notes_of(state: ResearcherState, budget_tokens: int = NOTES_TOKENS) -> str:
    """The conversation after the opening messages, newest kept whole when it must be cut."""
    lines = []
    for m in (m for m in state["messages"] if m["id"] not in ("system", "task")):
        if m["role"] == "assistant":
            calls = ", ".join(f"{c['name']}({json.dumps(c.get('args'))})" for c in m.get("tool_calls") or [])
            text = (m.get("content") or "").strip()
            lines.append(
                "You: " + (text + (" " if text and calls else "") + (f"[called {calls}]" if calls else ""))
            )
        elif m["role"] == "tool":
            lines.append(m.get("content") or "")
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        used += estimate_tokens(line)
        if used > budget_tokens:
            kept.append("[... earlier notes cut]")
            break
        kept.append(line)
    return "\n\n".join(reversed(kept))

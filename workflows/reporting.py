"""Assembling the report's frame: numbered sources, unfinished steps, and the partial report on abort.

Pure functions, deterministic, no LLM: an aborted run or a run whose reporter is out of reach must still
leave a report that says exactly what was and was not done.
"""

from __future__ import annotations

import re

from common.domains import DomainPolicy
from common.models import Clarification, Finding, Plan, Source

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters that make markdown or HTML wherever they stand; a backslash before any of them makes it
# literal (CommonMark). A list marker matters only at the start, so only there is it escaped too.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|!~&])")
_LEADING_MARKER = re.compile(r"^(\d{0,9})([.)\-+=])")
_SAFE_URL = re.compile(r"^https?://[^\s<>\"'`\\]+$", re.IGNORECASE)


def md_inline(text: str, limit: int = 300) -> str:
    """Text from a document, a page, a model or a person, made safe to place inside a markdown line:
    control characters and line breaks gone (no fake headings or bullets), every markdown or HTML
    character escaped (no links, images, tags or `[n]` citations it did not mean), and bounded."""
    flat = " ".join(_CONTROL.sub(" ", text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return _LEADING_MARKER.sub(r"\1\\\2", _MARKDOWN.sub(r"\\\1", flat))


def md_url(url: str) -> str:
    """A link target that cannot break out of `<...>`: an http(s) URL without spaces, quotes or angle
    brackets as it is; anything else as escaped text."""
    return f"<{url}>" if _SAFE_URL.match(url) and len(url) <= 2000 else md_inline(url)


def number_sources(findings: list[Finding]) -> list[Source]:
    """De-duplicate sources across findings (same URL or path) and number them 1..n in first-seen
    order; each finding's sources are renumbered to match, so `[n]` means the same thing everywhere."""
    numbered: dict[str, Source] = {}
    for finding in findings:
        renumbered = []
        new_ids: dict[str, str] = {}
        for source in finding.sources:
            key = source.url or source.path or source.title or source.id
            if key not in numbered:
                numbered[key] = source.model_copy(update={"id": str(len(numbered) + 1)})
            new_ids[source.id] = numbered[key].id
            renumbered.append(numbered[key])
        finding.sources = renumbered
        for claim in finding.claims:
            claim.source_ids = [new_ids[i] for i in claim.source_ids if i in new_ids]
    return list(numbered.values())


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def keep_known_citations(markdown: str, sources: list[Source]) -> str:
    """Drop any `[n]` the reporter wrote that names no listed source: a report never cites what the
    run did not find. `[1, 7]` keeps the numbers that exist."""
    known = {s.id for s in sources}

    def fix(match: re.Match[str]) -> str:
        numbers = [n.strip() for n in match.group(1).split(",")]
        kept = [n for n in numbers if n in known]
        return f"[{', '.join(kept)}]" if kept else ""

    return _CITATION.sub(fix, markdown)


def cited_numbers(markdown: str) -> set[str]:
    return {n.strip() for m in _CITATION.finditer(markdown) for n in m.group(1).split(",")}


def sources_section(sources: list[Source]) -> str:
    """The numbered sources. Titles and paths come from pages and documents, so each is escaped."""
    if not sources:
        return ""
    lines = []
    for s in sources:
        name = md_inline(s.title) if s.title else (md_url(s.url) if s.url else md_inline(s.path or ""))
        line = f"{s.id}. {name}"
        if s.url and s.title:
            line += f" {md_url(s.url)}"
        if s.path and s.title:
            line += f" ({md_inline(s.path)})"
        lines.append(line)
    return "\n\n## Sources\n\n" + "\n".join(lines) + "\n"


def artifacts_section(findings: list[Finding]) -> str:
    """Files coder steps made, by reference: the report links them, it never inlines their bytes."""
    lines = [
        f"- {md_inline(a.name)} ({a.size} bytes, {md_inline(a.media_type)}) from "
        f'"{md_inline(f.title)}": {md_inline(a.path, 1000)}'
        for f in findings
        for a in f.artifacts
    ]
    return "\n\n## Artifacts\n\n" + "\n".join(lines) + "\n" if lines else ""


def method_section(clarification: Clarification | None, domains: DomainPolicy | None = None) -> str:
    """How the run went about it: the planner's clarifying questions and the answer, and the domain
    policy its web searches and page reads kept to ('' when there is neither)."""
    parts = []
    if clarification is not None and clarification.questions:
        lines = "\n".join(f"- {md_inline(q)}" for q in clarification.questions)
        if clarification.answer is not None:
            answered = f"The person answered: {md_inline(clarification.answer, 2000)}"
        elif clarification.timed_out:
            answered = "No answer came within the time allowed; the run planned without one."
        else:
            answered = "The run ended before an answer came."
        parts.append(f"Before planning, the planner asked:\n\n{lines}\n\n{answered}")
    if domains is not None and not domains.empty:
        rules = "\n".join(f"- {md_inline(line, 2000)}" for line in domains.describe())
        parts.append(f"Web searches and page reads kept to this domain policy:\n\n{rules}")
    return "\n\n## Method\n\n" + "\n\n".join(parts) + "\n" if parts else ""


def budget_section(reached: str | None) -> str:
    if not reached:
        return ""
    return (
        f"\n\n## Budget\n\nThis run stopped starting new work when {reached}, as its budget policy "
        "says; the report is written from what it had found by then.\n"
    )


def unfinished_section(plan: Plan | None) -> str:
    if plan is None:
        return ""
    missing = [s for s in plan.steps if s.status in ("failed", "skipped", "pending", "running")]
    if not missing:
        return ""
    lines = [
        f"- {md_inline(s.title)}: {s.status}" + (f" ({md_inline(s.error, 500)})" if s.error else "")
        for s in missing
    ]
    return "\n\n## Steps not completed\n\n" + "\n".join(lines) + "\n"


def partial_report(
    question: str, reason: str, plan: Plan | None, findings: list[Finding], *, outcome: str = "aborted"
) -> str:
    """The report of a run that ended early (`outcome` "aborted" or "failed"): what was found, unedited."""
    done = len(findings)
    total = len(plan.steps) if plan else 0
    parts = [
        f"# Partial report ({outcome}): {md_inline(question, 500)}",
        f"> This run {outcome}{': ' + md_inline(reason, 500) if reason else ''}. "
        f"{done} of {total} steps had completed; their findings follow unedited.",
    ]
    for finding in findings:
        parts.append(f"## {md_inline(finding.title)}\n\n{finding.summary}")
    if not findings:
        parts.append("No step had completed.")
    return "\n\n".join(parts) + "\n" + artifacts_section(findings) + unfinished_section(plan)

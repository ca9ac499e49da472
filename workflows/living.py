"""Living research: what a run takes from its predecessor, and what its report says changed since.

A follow-up (`POST /v1/runs/{id}/followup`) or a scheduled run has a predecessor: the run it follows
up, or the previous completed run of its schedule (activities/living.py finds it). Its planner is
shown the predecessor's findings so the plan builds on them, and its report ends with a section
"What changed since <date>" computed here from the structured findings of both runs (their claims
and the sources the claims cite), never from a diff of report text.

The comparison is deterministic, so it replays and can be tested exactly:
- a source is the same source when its URL (or its document path) is the same; an earlier run's
  finding met in the tenant's library is that run's conclusion, not evidence: it is no source here,
  and a claim resting on such findings alone is left out of the comparison;
- a claim is the same claim when its text is the same after case, spacing and end punctuation are
  normalised;
- a claim of this run that is not an earlier claim is *changed* when it cites a source that an
  earlier claim, no longer made, also cited (the same source now says something else), else *new*;
- an earlier claim that is not made again, and was not changed into another, is *no longer
  supported*, with the reason: its sources were not found again, or were found but no longer
  state it.
- an earlier claim and a claim of this run *contradict* each other when the fact checker (one
  structured model call, made by the workflow with the pairs `check_candidates` chooses) says they
  cannot both be true: that takes a model's judgement, so it is the one part not computed here. A
  contradicted pair is listed as such and in no other list; the ids the model may name are enums of
  the claims it was shown, so it cannot name a claim that does not exist.

Pure: no I/O, clock or randomness (it runs inside the workflow). Must never: render text from a
source, a document or a model without md_inline, or grow without bound (each list is capped).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from common.models import ChatMessage, Finding, PriorRun, Source
from workflows.prompts import render_findings
from workflows.reporting import md_inline, md_url

SECTION_TITLE = "What changed since"
MAX_LISTED = 25  # per list in the section; the rest are counted
MAX_PRIOR_CHARS = 12_000  # of the predecessor's findings shown to the planner
MAX_CHECKED = 30  # claims of each run shown to the fact checker, which bounds its prompt
_END_PUNCTUATION = re.compile(r"[\s.;:!?,]+$")


def _claim_key(text: str) -> str:
    return _END_PUNCTUATION.sub("", " ".join(text.split()).casefold())


def source_key(source: Source) -> str:
    return source.url or source.path or source.title or source.id


def _earlier_conclusion(source: Source) -> bool:
    """A finding of an earlier run, found in the tenant's library (activities/library.py): the runs'
    own conclusions, not evidence, so neither a source to compare nor support for a claim."""
    return source.via == "library" and (source.path or "").startswith("finding:")


@dataclass
class _Claim:
    text: str
    sources: list[Source]

    @property
    def keys(self) -> set[str]:
        return {source_key(s) for s in self.sources}


def _claims(findings: list[Finding]) -> dict[str, _Claim]:
    """Each distinct claim of `findings` by its normalised text, with the sources it cites."""
    out: dict[str, _Claim] = {}
    for finding in findings:
        by_id = {s.id: s for s in finding.sources}
        for claim in finding.claims:
            key = _claim_key(claim.text)
            if not key:
                continue
            cited = [by_id[i] for i in claim.source_ids if i in by_id]
            evidence = [c for c in cited if not _earlier_conclusion(c)]
            if cited and not evidence:
                continue  # It restates an earlier run's conclusion: nothing to compare.
            cited = evidence
            if key in out:
                out[key].sources += [s for s in cited if source_key(s) not in out[key].keys]
            else:
                out[key] = _Claim(claim.text, cited)
    return out


def _sources(findings: list[Finding]) -> dict[str, Source]:
    out: dict[str, Source] = {}
    for finding in findings:
        for source in finding.sources:
            if not _earlier_conclusion(source):
                out.setdefault(source_key(source), source)
    return out


@dataclass(frozen=True)
class Contradiction:
    earlier: str
    now: str
    why: str


def check_candidates(earlier: list[Finding], now: list[Finding]) -> tuple[list[str], list[str]]:
    """The claims the fact checker compares: the earlier run's (those not made again first, as they
    are likeliest to have been overturned; then those made again) and this run's claims that are not
    earlier ones, at most MAX_CHECKED of each. Nothing to check when either side is empty."""
    before, after = _claims(earlier), _claims(now)
    dropped = [c.text for k, c in before.items() if k not in after]
    kept = [c.text for k, c in before.items() if k in after]
    fresh = [c.text for k, c in after.items() if k not in before]
    if not fresh or not before:
        return [], []
    return [*dropped, *kept][:MAX_CHECKED], fresh[:MAX_CHECKED]


def contradictions_from(
    pairs: list[tuple[str, str, str]], earlier: list[str], now: list[str]
) -> list[Contradiction]:
    """The checker's pairs of ids (E1.., N1.., as shown by `check_candidates`) as claims, in the order
    of this run's claims; a claim of this run paired twice keeps its first pair."""
    found: dict[int, Contradiction] = {}
    for e, n, why in pairs:
        i, j = int(e[1:]) - 1, int(n[1:]) - 1
        if 0 <= i < len(earlier) and 0 <= j < len(now) and j not in found:
            found[j] = Contradiction(earlier[i], now[j], why)
    return [found[j] for j in sorted(found)]


@dataclass
class Changes:
    """The comparison of two runs' findings (each list in the order the runs found things)."""

    new_sources: list[Source] = field(default_factory=list)
    gone_sources: list[Source] = field(default_factory=list)
    new_claims: list[str] = field(default_factory=list)
    changed_claims: list[tuple[str, str]] = field(default_factory=list)  # (earlier, now)
    unsupported_claims: list[tuple[str, str]] = field(default_factory=list)  # (earlier, why)
    # (earlier, now, why, whether this run still makes the earlier claim too)
    contradicted_claims: list[tuple[str, str, str, bool]] = field(default_factory=list)
    kept_claims: int = 0

    @property
    def nothing(self) -> bool:
        return not (
            self.new_sources
            or self.gone_sources
            or self.new_claims
            or self.changed_claims
            or self.unsupported_claims
            or self.contradicted_claims
        )


def compare(
    earlier: list[Finding], now: list[Finding], contradictions: Sequence[Contradiction] = ()
) -> Changes:
    before_sources, now_sources = _sources(earlier), _sources(now)
    before, after = _claims(earlier), _claims(now)
    changes = Changes(
        new_sources=[s for k, s in now_sources.items() if k not in before_sources],
        gone_sources=[s for k, s in before_sources.items() if k not in now_sources],
        kept_claims=sum(1 for k in after if k in before),
    )
    dropped = {k: c for k, c in before.items() if k not in after}
    # A contradicted pair is accounted for: neither claim appears in another list.
    replaced: set[str] = set()
    answered: set[str] = set()
    for c in contradictions:
        then, now_key = _claim_key(c.earlier), _claim_key(c.now)
        if then not in before or now_key not in after or now_key in before or now_key in answered:
            continue
        answered.add(now_key)
        replaced.add(then)
        changes.contradicted_claims.append((before[then].text, after[now_key].text, c.why, then in after))
    for key, claim in after.items():
        if key in before or key in answered:
            continue
        # The same source, no longer saying what it said: the earliest such earlier claim changed.
        was = next(
            (k for k, c in dropped.items() if k not in replaced and c.keys & claim.keys),
            None,
        )
        if was is None:
            changes.new_claims.append(claim.text)
        else:
            replaced.add(was)
            changes.changed_claims.append((dropped[was].text, claim.text))
    for key, claim in dropped.items():
        if key in replaced:
            continue
        why = (
            "its sources were read again but no longer state it"
            if claim.keys & now_sources.keys()
            else "its sources were not found again"
        )
        changes.unsupported_claims.append((claim.text, why))
    return changes


def _source_line(source: Source) -> str:
    """A source as the report's Sources section shows it: its title, then its link or document path."""
    if source.url:
        where = md_url(source.url)
    else:
        where = (
            f"({md_inline(source.path or source.id)})"
            if source.title
            else md_inline(source.path or source.id)
        )
    return f"- {md_inline(source.title)} {where}" if source.title else f"- {where}"


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LISTED:
        return lines
    return [*lines[:MAX_LISTED], f"- … and {len(lines) - MAX_LISTED} more"]


def when(prior: PriorRun) -> str:
    """The predecessor's finishing time as the section's title names it (UTC, to the minute)."""
    try:
        return datetime.fromisoformat(prior.finished_at).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return md_inline(prior.finished_at, 40)


def what_changed_section(
    prior: PriorRun,
    findings: list[Finding],
    contradictions: Sequence[Contradiction] = (),
    unchecked: str | None = None,
) -> str:
    """The report's last section: what this run found that its predecessor did not, and the reverse.
    `contradictions` are the fact checker's; `unchecked` says why it could not be asked (it is then
    said in the section, never passed over in silence)."""
    changes = compare(prior.findings, findings, contradictions)
    parts = [
        f"\n\n## {SECTION_TITLE} {when(prior)}\n\n"
        f"Compared with run {md_inline(prior.workflow_id, 200)} "
        f'("{md_inline(prior.question, 200)}"), claim by claim and source by source.'
    ]
    if changes.nothing:
        kept = changes.kept_claims
        same = f"the same {kept} claim rests" if kept == 1 else f"the same {kept} claims rest"
        parts.append(f"\n\nNothing changed: {same} on the same sources.")
    if changes.new_sources:
        parts.append(
            "\n\n### New sources\n\n" + "\n".join(_capped([_source_line(s) for s in changes.new_sources]))
        )
    if changes.contradicted_claims:
        lines = [
            f"- was: {md_inline(old, 600)}\n  now: {md_inline(new, 600)}\n  why: {md_inline(why, 600)}"
            + ("\n  (this run's sources still state the earlier claim too)" if still else "")
            for old, new, why, still in changes.contradicted_claims
        ]
        parts.append(
            "\n\n### Contradicted claims (each pair judged by the model not both true)\n\n"
            + "\n".join(_capped(lines))
        )
    if changes.new_claims:
        lines = [f"- {md_inline(c, 600)}" for c in changes.new_claims]
        parts.append("\n\n### New claims\n\n" + "\n".join(_capped(lines)))
    if changes.changed_claims:
        lines = [
            f"- was: {md_inline(old, 600)}\n  now: {md_inline(new, 600)}"
            for old, new in changes.changed_claims
        ]
        parts.append(
            "\n\n### Changed claims (the same source now says something else)\n\n" + "\n".join(_capped(lines))
        )
    if changes.unsupported_claims:
        lines = [f"- {md_inline(c, 600)} ({why})" for c, why in changes.unsupported_claims]
        parts.append("\n\n### Earlier claims no longer supported\n\n" + "\n".join(_capped(lines)))
    if changes.gone_sources:
        lines = [_source_line(s) for s in changes.gone_sources]
        parts.append("\n\n### Earlier sources not found again\n\n" + "\n".join(_capped(lines)))
    if unchecked:
        parts.append(f"\n\nContradictions were not checked: {md_inline(unchecked, 300)}.")
    if not changes.nothing and changes.kept_claims:
        kept = changes.kept_claims
        parts.append(f"\n\n{kept} earlier claim{' was' if kept == 1 else 's were'} found again unchanged.")
    return "".join(parts) + "\n"


def with_prior(messages: list[ChatMessage], prior: PriorRun | None) -> list[ChatMessage]:
    """The planner's messages with the predecessor's findings added to its task, so the plan builds on
    them (verifies, updates, goes further) instead of repeating them."""
    if prior is None:
        return messages
    sources = "\n".join(
        f"- {s.title or s.url or s.path}" + (f" ({s.url or s.path})" if s.title and (s.url or s.path) else "")
        for s in _sources(prior.findings).values()
    )
    earlier = render_findings(prior.findings) + (f"\n\nEarlier sources:\n{sources}" if sources else "")
    if len(earlier) > MAX_PRIOR_CHARS:
        earlier = earlier[:MAX_PRIOR_CHARS] + "\n(… the rest is left out)"
    note = (
        f"\n\nAn earlier run (finished {when(prior)}) researched: {prior.question}\n"
        "Its findings are below. Plan steps that build on them: check whether they still hold, look "
        "for what is new since, and go further; do not repeat what is already established.\n\n"
        f"Earlier findings:\n{earlier}"
    )
    *head, last = messages
    return [*head, last.model_copy(update={"content": last.content + note})]

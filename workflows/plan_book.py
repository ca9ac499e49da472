"""A run's plan and what became of it: versions, step ids, the steps people added or skipped while
research ran, and each step's finding.

ResearchWorkflow tells the story (plan, approve, delegate, replan, report); this keeps the books, as
Budget keeps the spend. Pure and deterministic: no clock, no I/O; its state travels to a continuation
in `Carried`.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.models import MAX_STEPS, AddStep, EditPlan, Finding, Plan, PlanStep, StepSpec
from common.structured import DraftStep

CONTEXT_CHARS_PER_FINDING = 1500


class PlanBook:
    def __init__(
        self,
        max_steps: int,
        plan: Plan | None = None,
        next_step: int = 1,
        findings: Sequence[Finding] = (),
    ) -> None:
        self.max_steps = max_steps
        self.plan = plan
        self.next_step = next_step
        self.findings: dict[str, Finding] = {f.step_id: f for f in findings}
        self.added: set[str] = set()  # steps added with add_step
        self.skipped: set[str] = set()  # steps a person skipped

    @property
    def version(self) -> int:
        return self.plan.version if self.plan else 0

    @property
    def steps(self) -> list[PlanStep]:
        return self.plan.steps if self.plan else []

    def step_ids(self) -> tuple[str, ...]:
        """The ids a revision or review may name: the plan's steps, to keep or reword."""
        return tuple(s.id for s in self.steps)

    def step(self, step_id: str) -> PlanStep | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def install(
        self,
        specs: Sequence[StepSpec | DraftStep],
        rationale: str,
        *,
        keep_completed: bool = False,
        keep_steered: bool = False,
    ) -> Plan:
        """Make a new plan version: completed steps stay as they were, `specs` become the rest. With
        `keep_steered` (a replan) skipped steps and added steps not yet run stay too."""
        kept = (
            [
                s
                for s in self.steps
                if s.status in ("done", "failed")
                or (
                    keep_steered and (s.status == "skipped" or (s.status == "pending" and s.id in self.added))
                )
            ]
            if keep_completed
            else []
        )
        kept_ids = {s.id for s in kept}
        existing = {s.id: s for s in self.steps}
        steps = list(kept)
        for spec in specs[: self.max_steps]:
            named = getattr(spec, "id", None)  # an editor's, or a model's when it may name steps
            if named in kept_ids:
                continue  # A completed step sent back unchanged by an editor.
            if named and named in existing:
                step_id = named
            else:
                step_id = self._new_id()
            steps.append(PlanStep(id=step_id, title=spec.title, kind=spec.kind, description=spec.description))
        self.plan = Plan(version=self.version + 1, steps=steps, rationale=rationale)
        return self.plan

    def _new_id(self) -> str:
        step_id = f"s{self.next_step}"
        self.next_step += 1
        return step_id

    def check_edit(self, edit: EditPlan) -> None:
        """Refuse an edit that is stale, empty, too long, names an unknown step twice or at all, or
        changes a step that already ran; the caller sees the reason."""
        assert self.plan is not None
        if edit.plan_version != self.plan.version:
            raise ValueError(f"plan v{edit.plan_version} is stale: the current plan is v{self.plan.version}")
        if not edit.steps:
            raise ValueError("an edited plan needs at least one step")
        if len(edit.steps) > self.max_steps:
            raise ValueError(
                f"an edited plan has at most {self.max_steps} steps; this one has {len(edit.steps)}"
            )
        current = {s.id: s for s in self.plan.steps}
        seen: set[str] = set()
        for spec in edit.steps:
            if spec.id is None:
                continue
            if spec.id in seen:
                raise ValueError(f"step id {spec.id} appears twice")
            seen.add(spec.id)
            step = current.get(spec.id)
            if step is None:
                raise ValueError(f"unknown step id {spec.id}; leave the id out for a new step")
            if step.status in ("done", "failed") and (spec.title, spec.kind) != (step.title, step.kind):
                raise ValueError(f"step {spec.id} has already run and cannot be changed")

    def add(self, spec: AddStep) -> str | None:
        """A step a person adds while research runs; its id, or None when the plan is full."""
        assert self.plan is not None
        if len(self.plan.steps) >= MAX_STEPS:
            return None
        step_id = self._new_id()
        self.added.add(step_id)
        self.plan.steps.append(
            PlanStep(id=step_id, title=spec.title, kind=spec.kind, description=spec.description)
        )
        return step_id

    def mark_unfinished(self, why: str) -> None:
        for step in self.steps:
            if step.status in ("pending", "running"):
                step.status, step.error = "skipped", why

    def ordered_findings(self) -> list[Finding]:
        return [self.findings[s.id] for s in self.steps if s.id in self.findings]

    def context(self) -> str:
        """What earlier steps found, as a new step is told it."""
        return "\n\n".join(
            f"{f.title}: {f.summary[:CONTEXT_CHARS_PER_FINDING]}" for f in self.ordered_findings()
        )

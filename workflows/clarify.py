"""Clarifying questions: before it plans, the planner may ask the person up to three short questions.

Why this exists: an ambiguous question ("the best battery?": for a phone, a car, the grid?) makes a plan
that answers the wrong thing, and money is spent before anyone notices. With `clarify` "auto" (the
default) the planner asks only when it judges the question ambiguous, and not at all for an
auto-approved run (nobody waits to answer); "always" makes it ask at least one; "never" skips the call. The run then waits in phase `clarifying` for the `answer_clarification`
update, under the approval timeout and its policy (plan without answers, or abort). The questions and
the answer go into the planner's context and into the report's Method section.

The questions are one structured-output call of their own schema (common/structured.py clarify_model),
so a provider answers them in JSON whatever the prompt says. Deterministic: this module only keeps the
state and checks the update; ResearchWorkflow does the waiting.

Must never: accept an empty answer, an answer when no question waits, or a second answer (the
validator refuses each before it enters history).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from common.models import AnswerClarification, Clarification, Phase, ResearchInput, Usage
    from common.structured import clarify_model
    from workflows import prompts
    from workflows.calls import chat_structured

# workflow.patched id: runs from before clarifying questions made no such call and must replay.
PATCH_CLARIFY = "clarify-before-planning"


class Clarifier:
    def __init__(self, carried: Clarification | None = None) -> None:
        self.clarification = carried

    @staticmethod
    def wanted(request: ResearchInput) -> bool:
        """Whether to ask at all: "always" does; "auto" does unless the run is auto-approved, because a
        person who said not to wait for them is not there to answer (and runs scripted that way before
        clarifying questions existed must not start waiting); "never" does not."""
        return request.clarify == "always" or (request.clarify == "auto" and not request.auto_approve)

    async def ask(self, request: ResearchInput, usage: Usage) -> list[str]:
        """The planner's questions about `request`'s question: none when it finds it clear."""
        always = request.clarify == "always"
        draft = await chat_structured(
            "planner",
            prompts.clarify_messages(request.question, always),
            clarify_model(always),
            name="clarify",
            attempts=request.max_plan_attempts,
            summary="clarifying questions",
            usage=usage,
        )
        if draft.questions:
            self.clarification = Clarification(questions=list(draft.questions))
        return list(draft.questions)

    @property
    def waiting(self) -> bool:
        c = self.clarification
        return c is not None and c.answer is None and not c.timed_out

    def check(self, phase: Phase, answer: AnswerClarification) -> None:
        """Why `answer` cannot be taken now (a ValueError the caller sees), or nothing."""
        if phase != "clarifying" or not self.waiting:
            raise ValueError(f"no clarifying question awaits an answer; the run is {phase}")
        if not answer.answer.strip():
            raise ValueError("the answer is empty")

    def answer(self, answer: AnswerClarification) -> Clarification:
        assert self.clarification is not None
        self.clarification.answer = answer.answer
        return self.clarification

    def time_out(self) -> None:
        if self.clarification is not None:
            self.clarification.timed_out = True

"""ResearchWorkflow: plan, wait for approval, delegate steps to child workflows, replan, report.

Deterministic orchestration only: no I/O, clocks, randomness or environment reads. Every LLM call is an
activity (see workflows/calls.py) and every step a child workflow, so Temporal's event history is the
run's only checkpoint. Signals and the update record intent in state; the main loop acts on it.
A malformed or stale signal is logged and ignored: it never fails or stalls the run.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RawValue, SearchAttributeKey
from temporalio.contrib.workflow_streams import WorkflowStream
from temporalio.exceptions import ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from common import errors
    from common.models import (
        MAX_STEPS,
        SIGNALS,
        AbortRun,
        AdmitRun,
        AnswerClarification,
        BudgetStatus,
        Carried,
        Clarification,
        EditPlan,
        Finding,
        LibraryAdd,
        Phase,
        Plan,
        PlanStep,
        PredecessorRequest,
        PriorRun,
        RaiseBudget,
        RequestChanges,
        ResearchInput,
        ResearchResult,
        RunStatus,
        StepInput,
        StepSpec,
        Usage,
    )
    from common.names import (
        CODER_WORKFLOW,
        QUERY_STATUS,
        RESEARCH_WORKFLOW,
        RESEARCHER_WORKFLOW,
        SEARCH_ATTR_PHASE,
        SIGNAL_ABORT,
        SIGNAL_ADD_STEP,
        SIGNAL_APPROVE_PLAN,
        SIGNAL_REQUEST_CHANGES,
        SIGNAL_SKIP_STEP,
        STEP_WORKFLOW,
        UPDATE_ANSWER_CLARIFICATION,
        UPDATE_EDIT_PLAN,
        UPDATE_RAISE_BUDGET,
    )
    from common.structured import DraftStep, contradictions_model, plan_model, review_model
    from workflows import budget, living, prompts, reporting
    from workflows.budget import Budget
    from workflows.calls import (
        WORKFLOW_TASK_TIMEOUT,
        add_to_library,
        admit_run,
        chat,
        chat_structured,
        find_predecessor,
        save_report,
    )
    from workflows.clarify import PATCH_CLARIFY, Clarifier
    from workflows.details import render_details
    from workflows.event_log import RunEvents
    from workflows.inputs import one_input
    from workflows.plan_book import PlanBook

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

PHASE_KEY = SearchAttributeKey.for_keyword(SEARCH_ATTR_PHASE)

# workflow.patched ids: each marks a change of commands that landed code must replay around.
PATCH_RESEARCHER_AGENT = "researcher-agent"
PATCH_ABORT_CANCELS_STEPS = "abort-cancels-steps"
PATCH_HAND_OVER_WHILE_AWAITING = "hand-over-while-awaiting-approval"
PATCH_LIBRARY = "tenant-library"
PATCH_CONTRADICTIONS = "what-changed-contradictions"
PATCH_SCHEDULED_ADMISSION = "scheduled-admission"
# What a run refused by its tenant's quotas was doing when it failed ("failed while being admitted").
ADMISSION = "being admitted"


class _Aborted(Exception):
    """Raised inside the workflow when an abort signal interrupts work in progress."""


def _root_message(err: BaseException) -> str:
    """The message that names the cause: the first ApplicationError in the chain (activities translate
    provider errors into those), else the innermost failure. 'Activity task failed' says little."""
    cause: BaseException | None = err
    innermost = str(err)
    while cause is not None:
        if isinstance(cause, ApplicationError):
            return cause.message
        innermost = str(cause) or innermost
        cause = cause.__cause__
    return innermost


# The input is validated by workflows/inputs.py: a start with a bad input (an empty question sent with
# `temporal workflow start`, no input at all, a number) fails the run at once with the reason, instead of
# retrying a workflow task that can never succeed.
@workflow.defn(name=RESEARCH_WORKFLOW, failure_exception_types=[ValidationError])
class ResearchWorkflow:
    @workflow.init
    def __init__(self, *inputs: Any) -> None:
        request = one_input(RESEARCH_WORKFLOW, inputs, ResearchInput)
        self._input = request
        self._phase: Phase = "planning"
        self._book = PlanBook(request.max_steps)
        self._iterations = 0
        self._usage = Usage()
        self._continued = 0
        carried = request.carried
        started_at = workflow.now()
        if carried is not None:  # A continuation: pick up where the previous run left off.
            self._book = PlanBook(request.max_steps, carried.plan, carried.next_step, carried.findings)
            self._usage = carried.usage
            self._iterations = carried.iterations
            self._continued = carried.continued
            started_at = datetime.fromisoformat(carried.started_at)
        # A continuation that picks up a plan awaiting approval keeps its approval clock.
        self._awaiting_since: datetime | None = (
            datetime.fromisoformat(carried.awaiting_since) if carried and carried.awaiting_since else None
        )
        self._budget = Budget(request, started_at, carried.budget if carried else None)
        self._clarifier = Clarifier(carried.clarification if carried else None)
        # The run's events (`GET /v1/runs/{id}/events`): a durable stream in workflow state, carried
        # through continue-as-new with its offsets.
        self._stream = WorkflowStream(carried.stream if carried else None)
        self._events = RunEvents(self._stream, self._book.plan, self._usage)
        self._reached: str | None = None  # the limit that stopped new work, while it holds
        self._finished_by_budget: str | None = None
        self._steps: dict[str, asyncio.Task[None]] = {}  # running step tasks, for skip_step
        self._approved: int | None = None
        self._changes: RequestChanges | None = None
        self._abort: AbortRun | None = None
        self._report_path: str | None = None
        self._error: str | None = None
        self._failed_while = "starting"
        # CairnPhase is kept in step only when the run started with it: the client sets it only where
        # the server has it registered, and upserting an unregistered attribute fails the workflow task.
        # Runs started without it (older runs, `temporal workflow start`) make no upserts at all, so
        # their histories replay unchanged.
        self._indexed_phase: str | None = workflow.info().typed_search_attributes.get(PHASE_KEY)
        # The run this one builds on (a follow-up's or a scheduled run's predecessor), once found.
        self._prior: PriorRun | None = carried.prior if carried else None

    # -- the loop ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, *inputs: Any) -> ResearchResult:
        request = self._input
        try:
            report = await self._research()
        except FailureError as err:
            self._error = _root_message(err)
            await self._keep_what_was_found()
            self._set_phase("failed")
            self._events.finish("failed", self._usage, self._error)
            await self._release_watchers()
            raise ApplicationError(
                f"research failed while {self._failed_while}: {self._error}",
                type=errors.RESEARCH_FAILED,
                non_retryable=True,
            ) from err
        self._report_path = (await save_report(report, self._input.tenant)).path
        library_error = await self._join_library()
        self._set_phase("aborted" if self._abort else "done")
        if self._abort:
            self._events.finish("aborted", self._usage, self._abort.reason)
        else:
            self._events.finish("done", self._usage)
        await self._release_watchers()
        return ResearchResult(
            workflow_id=workflow.info().workflow_id,
            question=request.question,
            report=report,
            sources=reporting.number_sources(self._book.ordered_findings()),
            usage=self._usage,
            aborted=self._abort is not None,
            abort_reason=self._abort.reason if self._abort else None,
            report_path=self._report_path,
            plan=self._book.plan,
            findings=self._book.ordered_findings(),
            library_error=library_error,
        )

    async def _join_library(self) -> str | None:
        """The finished run's archive and findings join its tenant's library (activities/library.py),
        for later runs to search. The report is written already, so a failure here is recorded in the
        result and logged, not turned into a failed run. Runs from before the library replay without it."""
        if not workflow.patched(PATCH_LIBRARY):
            return None
        try:
            await add_to_library(
                LibraryAdd(
                    workflow_id=workflow.info().workflow_id,
                    tenant=self._input.tenant,
                    question=self._input.question,
                    findings=self._book.ordered_findings(),
                )
            )
        except FailureError as err:
            workflow.logger.warning("the run's findings could not join the library: %s", err)
            return _root_message(err)[:500]
        return None

    def _uses_library(self) -> bool:
        """The researcher searches the tenant's library when asked, and by default for runs that build
        on another (follow-ups and scheduled runs)."""
        if self._input.library is not None:
            return self._input.library
        return bool(self._input.follows or self._input.schedule_id)

    async def _release_watchers(self) -> None:
        """Hand the waiting stream subscribers what they have not read (the last event included) and
        turn new ones to the finished run, then wait for every handler, as a run must before it ends
        or continues as new."""
        self._stream.detach_pollers()
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _keep_what_was_found(self) -> None:
        """A failed run (a dead LLM, say) still leaves its findings in a partial report on disk; the
        run then fails with the original reason, whether or not this save succeeds. A scheduled run
        its quotas refused has found nothing, but its report says why it did not research, for whoever
        reads the schedule's runs."""
        if not self._book.findings and self._failed_while != ADMISSION:
            return
        self._book.mark_unfinished(f"the run failed: {self._error}")
        report = reporting.partial_report(
            self._input.question,
            f"while {self._failed_while}: {self._error}",
            self._book.plan,
            self._book.ordered_findings(),
            outcome="failed",
        )
        try:
            self._report_path = (await save_report(report, self._input.tenant)).path
        except FailureError as err:
            workflow.logger.warning("could not save the partial report of a failed run: %s", err)

    async def _research(self) -> str:
        """Returns the report's markdown: full when the run completes, partial when it is aborted."""
        try:
            carried = self._input.carried
            resumed = carried is not None
            awaiting = carried is not None and carried.stage == "approval"
            if not resumed:
                self._failed_while = "planning"
                self._publish()  # The run's first event: it is planning.
                # A scheduled run is admitted as the API admits a run it starts: Temporal started it,
                # so nothing has yet applied its tenant's quotas. Only scheduled runs ask, and only
                # those started since this landed, so every other history replays unchanged.
                if self._input.schedule_id and workflow.patched(PATCH_SCHEDULED_ADMISSION):
                    self._failed_while = ADMISSION
                    await self._unless_aborted(self._admit())
                    self._failed_while = "planning"
                await self._unless_aborted(self._within_budget())
                # Only runs that follow another or come from a schedule look one up (an activity), so
                # histories of every other run replay unchanged.
                if self._input.follows or self._input.schedule_id:
                    self._failed_while = "reading the earlier run"
                    self._prior = await self._unless_aborted(
                        find_predecessor(
                            PredecessorRequest(
                                workflow_id=workflow.info().workflow_id,
                                tenant=self._input.tenant,
                                follows=self._input.follows,
                                schedule_id=self._input.schedule_id,
                            )
                        )
                    )
                    self._failed_while = "planning"
                if self._clarifier.wanted(self._input) and workflow.patched(PATCH_CLARIFY):
                    await self._clarify()
                draft = await self._unless_aborted(
                    chat_structured(
                        "planner",
                        living.with_prior(
                            prompts.plan_messages(
                                self._input.question, self._input.max_steps, self._clarifier.clarification
                            ),
                            self._prior,
                        ),
                        plan_model(self._input.max_steps),
                        name="plan",
                        attempts=self._input.max_plan_attempts,
                        summary="plan v1",
                        usage=self._usage,
                    )
                )
                self._install_plan(draft.steps, draft.rationale)
            while True:
                if not resumed or awaiting:
                    await self._await_approval()
                    self._failed_while = "researching"
                    await self._unless_aborted(self._execute_pending())
                    await self._continue_as_new_if_suggested()
                resumed = awaiting = False
                if self._iterations >= self._input.max_plan_iterations or self._finished_by_budget:
                    break
                await self._unless_aborted(self._within_budget())
                if self._finished_by_budget:
                    break
                self._failed_while = "replanning"
                new_steps = await self._unless_aborted(self._review())
                if not new_steps:
                    break
                self._iterations += 1
                # A replan keeps what people did while research ran: skipped steps (the report lists
                # them) and steps added with add_step that have not run yet.
                self._install_plan(new_steps, "", keep_completed=True, keep_steered=True)
            self._failed_while = "reporting"
            return await self._unless_aborted(self._write_report())
        except _Aborted:
            reason = self._abort.reason if self._abort else ""
            self._reached = None
            return reporting.partial_report(
                self._input.question, reason, self._book.plan, self._book.ordered_findings()
            ) + reporting.method_section(self._clarifier.clarification, self._input.domains)

    async def _admit(self) -> None:
        """The `runs.admit` activity (activities/admission.py): a refusal fails the run, with the limit
        in its status and report. Admitted, the run takes the budgets it was given and its tenant's
        domain policy now, in place of those its schedule stored: the input carries both into a
        continuation, the report's Method section and every step's web searches and page reads."""
        admitted = await admit_run(
            AdmitRun(
                workflow_id=workflow.info().workflow_id,
                tenant=self._input.tenant,
                token_budget=self._input.token_budget,
                cost_budget_usd=self._input.cost_budget_usd,
            )
        )
        self._input = self._input.model_copy(
            update={
                "token_budget": admitted.token_budget,
                "cost_budget_usd": admitted.cost_budget_usd,
                "domains": admitted.domains,
            }
        )
        self._budget.admitted(admitted.token_budget, admitted.cost_budget_usd)
        self._publish()

    async def _clarify(self) -> None:
        """Ask the planner's clarifying questions, if it has any, and wait for the person's answer
        under the approval timeout and its policy (plan without the answer, or abort)."""
        if not await self._unless_aborted(self._clarifier.ask(self._input, self._usage)):
            return
        self._set_phase("clarifying")
        try:
            await workflow.wait_condition(
                lambda: (
                    not self._clarifier.waiting or self._abort is not None or self._history_full() is not None
                ),
                timeout=timedelta(seconds=self._input.approval_timeout_seconds),
                timeout_summary="clarification timeout",
            )
        except TimeoutError:
            self._clarifier.time_out()
            if self._input.on_approval_timeout == "abort":
                self._abort = AbortRun(
                    reason="the clarifying questions were not answered within "
                    f"{self._input.approval_timeout_seconds:g} seconds"
                )
        self._stop_if_history_full()
        if self._abort is not None:
            raise _Aborted()
        self._set_phase("planning")

    async def _await_approval(self) -> None:
        if self._input.auto_approve:
            return
        assert self._book.plan is not None
        # Only runs started since this landed hand over while they wait: recorded runs must replay.
        hand_over = workflow.patched(PATCH_HAND_OVER_WHILE_AWAITING)
        while True:
            version = self._book.plan.version
            self._set_phase("awaiting_approval")
            since = self._awaiting_since or workflow.now()
            self._awaiting_since = None
            waited = (workflow.now() - since).total_seconds()
            try:
                await workflow.wait_condition(
                    functools.partial(self._approval_settled, version, hand_over),
                    timeout=timedelta(seconds=max(self._input.approval_timeout_seconds - waited, 0.001)),
                    timeout_summary=f"approval timeout for plan v{version}",
                )
            except TimeoutError:
                if self._input.on_approval_timeout == "approve":
                    workflow.logger.info("plan v%d approved by timeout policy", version)
                    return
                self._abort = AbortRun(
                    reason=f"plan v{version} was not approved within "
                    f"{self._input.approval_timeout_seconds:g} seconds"
                )
            self._stop_if_history_full()
            if self._abort is not None:
                raise _Aborted()
            if self._approved is not None:
                self._approved = None
                return
            if hand_over and self._changes is None and self._book.version == version:
                # Nothing was decided and Temporal suggests a fresh history (a long wait, or a flood
                # of signals): hand the waiting plan over to a new run of this one.
                await self._continue_as_new("approval", since)
            if self._changes is not None:
                changes, self._changes = self._changes, None
                await self._unless_aborted(self._within_budget())
                self._set_phase("planning")
                self._failed_while = "revising the plan"
                draft = await self._unless_aborted(
                    chat_structured(
                        "planner",
                        living.with_prior(
                            prompts.revise_messages(
                                self._input.question,
                                self._book.plan,
                                changes.feedback,
                                self._input.max_steps,
                                self._clarifier.clarification,
                            ),
                            self._prior,
                        ),
                        plan_model(self._input.max_steps, self._book.step_ids()),
                        name="plan",
                        attempts=self._input.max_plan_attempts,
                        summary=f"plan v{version + 1} (revision)",
                        usage=self._usage,
                    )
                )
                self._install_plan(draft.steps, draft.rationale, keep_completed=True)
            # Otherwise an edit made a new version: wait again, with a fresh timer for it.

    async def _execute_pending(self) -> None:
        """Run pending steps, at most max_parallel_steps at once; a step added while they run
        (`add_step`) joins them, a skipped one (`skip_step`) never starts or is cancelled."""
        assert self._book.plan is not None
        self._set_phase("researching")
        limit = asyncio.Semaphore(self._input.max_parallel_steps)
        while True:
            new = [s for s in self._book.plan.steps if s.status == "pending" and s.id not in self._steps]
            for step in new:
                self._steps[step.id] = asyncio.ensure_future(self._run_step(step, limit))
            running = [t for t in self._steps.values() if not t.done()]
            if not running:
                break
            await workflow.wait_condition(
                lambda: all(t.done() for t in self._steps.values()) or self._has_new_pending()
            )
        for task in self._steps.values():
            task.result()  # An abort's cancellation, or a bug, surfaces here.
        self._steps.clear()

    def _has_new_pending(self) -> bool:
        return any(s.status == "pending" and s.id not in self._steps for s in self._book.steps)

    async def _run_step(self, step: PlanStep, limit: asyncio.Semaphore) -> None:
        async with limit:
            if step.status != "pending":
                return  # Skipped while it waited for a slot.
            await self._within_budget()
            if self._finished_by_budget:
                step.status, step.error = "skipped", f"not run: {self._finished_by_budget} was reached"
                self._publish()
                return
            if step.status != "pending":
                return  # Skipped while the run was paused.
            step.status = "running"
            self._publish()
            try:
                finding = await workflow.execute_child_workflow(
                    self._step_workflow(step),
                    StepInput(
                        question=self._input.question,
                        step=step,
                        context=self._book.context(),
                        archive_scope=f"run:{workflow.info().workflow_id}",
                        tool_calls=self._input.researcher_tool_calls,
                        tokens=self._step_tokens(),
                        context_tokens=self._input.researcher_context_tokens,
                        tenant=self._input.tenant,
                        domains=self._input.domains,
                        library=self._uses_library(),
                    ),
                    id=f"{workflow.info().workflow_id}/{step.id}",
                    result_type=Finding,
                    static_summary=f"step {step.id}: {step.title}"[:200],
                    task_timeout=WORKFLOW_TASK_TIMEOUT,
                )
            except asyncio.CancelledError:
                if step.id in self._book.skipped:
                    step.status, step.error = "skipped", "skipped by a person while it ran"
                    self._publish()
                    return  # Cancelled on purpose: the child and its activities were told to stop.
                step.status, step.error = "skipped", "the run was aborted"
                raise
            except FailureError as err:
                if isinstance(err.cause, CancelledError):
                    step.status, step.error = "skipped", "cancelled"
                    if step.id in self._book.skipped:
                        step.error = "skipped by a person while it ran"
                        self._publish()
                        return
                    raise
                step.status, step.error = "failed", _root_message(err)[:500]
                workflow.logger.warning("step %s failed: %s", step.id, step.error)
            else:
                self._book.findings[step.id] = finding
                self._usage.add(finding.usage)
                step.status = "done"
            self._publish()

    def _step_tokens(self) -> int:
        """A step may not spend more tokens than the run has left."""
        left = self._budget.tokens_left(self._usage)
        return (
            self._input.researcher_tokens
            if left is None
            else max(min(self._input.researcher_tokens, left), 1)
        )

    async def _within_budget(self) -> None:
        """Before new work: with a limit reached, pause until `raise_budget` (or an abort), or, by
        policy, stop starting work and go on to the report."""
        reached = self._budget.reached(self._usage, workflow.now())
        if reached is None or self._finished_by_budget:
            return
        self._reached = reached
        if self._input.on_budget == "finish":
            workflow.logger.info("%s was reached: finishing with what the run has", reached)
            self._finished_by_budget = reached
            self._publish()
            return
        workflow.logger.info("%s was reached: pausing for raise_budget", reached)
        phase = self._phase
        self._set_phase("paused")
        await workflow.wait_condition(
            lambda: (
                self._abort is not None
                or self._budget.reached(self._usage, workflow.now()) is None
                or self._history_full() is not None
            )
        )
        self._stop_if_history_full()
        self._reached = None
        if self._abort is None:
            self._set_phase(phase)

    async def _continue_as_new_if_suggested(self) -> None:
        """Between rounds (no step running) a long run hands its state to a fresh run when Temporal
        suggests it, so history never outgrows the server's limits. Nothing is repeated: the plan,
        findings, usage and budgets travel in the input."""
        if workflow.info().is_continue_as_new_suggested():
            await self._continue_as_new("review", None)

    async def _continue_as_new(
        self, stage: Literal["review", "approval"], awaiting_since: datetime | None
    ) -> None:
        assert self._book.plan is not None
        await self._release_watchers()  # They follow the run to its continuation.
        if self._abort is not None or self._approved is not None or self._changes is not None:
            # A decision arrived while handlers finished: act on it here rather than carry it over.
            return
        carried = Carried(
            plan=self._book.plan,
            findings=self._book.ordered_findings(),
            usage=self._usage,
            iterations=self._iterations,
            next_step=self._book.next_step,
            started_at=self._budget.started_at.isoformat(),
            continued=self._continued + 1,
            budget=self._budget.as_raise(),
            stage=stage,
            awaiting_since=awaiting_since.isoformat() if awaiting_since else None,
            stream=self._stream.get_state(),
            clarification=self._clarifier.clarification,
            prior=self._prior,
        )
        workflow.logger.info("continuing as new (history is long): run %d", carried.continued + 1)
        workflow.continue_as_new(self._input.model_copy(update={"carried": carried}))

    @staticmethod
    def _step_workflow(step: PlanStep) -> str:
        if step.kind == "code":
            return CODER_WORKFLOW
        # Runs from before the researcher agent keep their one-call StepWorkflow on replay.
        return RESEARCHER_WORKFLOW if workflow.patched(PATCH_RESEARCHER_AGENT) else STEP_WORKFLOW

    async def _review(self) -> list[DraftStep]:
        assert self._book.plan is not None
        self._set_phase("replanning")
        review = await chat_structured(
            "planner",
            prompts.review_messages(
                self._input.question,
                self._book.plan,
                self._book.ordered_findings(),
                self._input.max_steps,
                self._clarifier.clarification,
            ),
            review_model(self._input.max_steps, self._book.step_ids()),
            name="review",
            attempts=self._input.max_plan_attempts,
            summary=f"review plan v{self._book.plan.version}",
            usage=self._usage,
        )
        if review.sufficient:
            return []
        return list(review.steps[: self._input.max_steps])

    async def _write_report(self) -> str:
        self._set_phase("reporting")
        findings = self._book.ordered_findings()
        sources = reporting.number_sources(findings)
        reply = await chat(
            "reporter",
            prompts.report_messages(self._input.question, findings),
            summary="write report",
            usage=self._usage,
        )
        return (
            reporting.keep_known_citations(reply.content.rstrip(), sources)
            + "\n"
            + reporting.method_section(self._clarifier.clarification, self._input.domains)
            + reporting.artifacts_section(findings)
            + reporting.budget_section(self._finished_by_budget)
            + reporting.sources_section(sources)
            + reporting.unfinished_section(self._book.plan)
            + (await self._what_changed(findings) if self._prior else "")
        )

    async def _what_changed(self, findings: list[Finding]) -> str:
        """The "What changed since" section, with the fact checker's judgement of which new claims
        contradict earlier ones. A checker that cannot answer (after its retries), or a budget already
        spent, costs the run only that judgement: the section says it was not checked and why."""
        assert self._prior is not None
        earlier, now = living.check_candidates(self._prior.findings, findings)
        # Runs from before the check made no such call and must replay.
        if not (earlier and now and workflow.patched(PATCH_CONTRADICTIONS)):
            return living.what_changed_section(self._prior, findings)
        # The report is written whatever the budget; a judgement beyond it is not bought.
        reached = self._budget.reached(self._usage, workflow.now())
        if reached is not None:
            return living.what_changed_section(self._prior, findings, unchecked=f"{reached} was reached")
        try:
            draft = await chat_structured(
                "planner",
                prompts.contradiction_messages(self._input.question, earlier, now),
                contradictions_model(len(earlier), len(now)),
                name="contradictions",
                attempts=self._input.max_plan_attempts,
                summary="check contradictions",
                usage=self._usage,
            )
        except FailureError as err:
            if self._abort is not None or isinstance(err.cause, CancelledError):
                raise  # Aborted while checking: the abort ends the run, not this section.
            workflow.logger.warning("could not check contradictions: %s", err)
            return living.what_changed_section(self._prior, findings, unchecked=_root_message(err))
        pairs = [(c.earlier, c.now, c.why) for c in draft.contradictions]
        return living.what_changed_section(
            self._prior, findings, living.contradictions_from(pairs, earlier, now)
        )

    async def _unless_aborted(self, work: Awaitable[T]) -> T:
        """Run `work`, cancelling it as soon as an abort signal arrives (then raise _Aborted)."""
        if self._abort is not None:
            raise _Aborted()
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        aborted: asyncio.Future[None] = asyncio.ensure_future(
            workflow.wait_condition(lambda: self._abort is not None or self._history_full() is not None)
        )
        racers: list[asyncio.Future[Any]] = [task, aborted]
        await workflow.wait(racers, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            aborted.cancel()
            return task.result()
        self._stop_if_history_full()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, FailureError):
            pass  # Cancellation surfaces as either, depending on what was running.
        if workflow.patched(PATCH_ABORT_CANCELS_STEPS):
            await self._cancel_running_steps()
        self._book.mark_unfinished("the run was aborted")
        raise _Aborted()

    async def _cancel_running_steps(self) -> None:
        """Cancel every step still running (or waiting for a slot) and wait until each has stopped:
        its child workflow is cancelled and its activities are told, as with `skip_step`."""
        running = [t for t in self._steps.values() if not t.done()]
        for step in running:
            step.cancel()
        for step in running:
            try:
                await step
            except (asyncio.CancelledError, FailureError):
                pass

    # -- plan bookkeeping ----------------------------------------------------------------------

    def _approval_settled(self, version: int, hand_over: bool = False) -> bool:
        """Plan `version` was approved, revised, edited into a new version, or the run aborted; or the
        history needs handing over or is full."""
        return (
            self._abort is not None
            or self._approved is not None
            or self._changes is not None
            or self._book.version != version
            or (hand_over and workflow.info().is_continue_as_new_suggested())
            or self._history_full() is not None
        )

    def _history_full(self) -> str | None:
        """Why the run must stop taking work because its history nears Temporal's limits, or None."""
        info = workflow.info()
        events, size = info.get_current_history_length(), info.get_current_history_size()
        if events >= budget.HISTORY_GUARD_EVENTS or size >= budget.HISTORY_GUARD_BYTES:
            return (
                f"its history reached {events:,} events and {size / 1_048_576:.1f} MB, near Temporal's "
                "limit, so it stopped taking new work"
            )
        return None

    def _stop_if_history_full(self) -> None:
        """A full history ends the run as an abort does: running steps are cancelled and the report is
        written from what was found, rather than the server terminating the run with no report."""
        full = self._history_full()
        if full is not None and self._abort is None:
            workflow.logger.warning("the run %s", full)
            self._abort = AbortRun(reason=f"the run {full}")

    def _install_plan(
        self,
        specs: Sequence[StepSpec | DraftStep],
        rationale: str,
        *,
        keep_completed: bool = False,
        keep_steered: bool = False,
    ) -> Plan:
        plan = self._book.install(specs, rationale, keep_completed=keep_completed, keep_steered=keep_steered)
        self._publish()
        return plan

    def _set_phase(self, phase: Phase) -> None:
        self._phase = phase
        self._publish()
        if self._indexed_phase is not None and self._indexed_phase != phase:
            workflow.upsert_search_attributes([PHASE_KEY.value_set(phase)])
            self._indexed_phase = phase

    def _waiting_for(self) -> str | None:
        if self._phase == "clarifying" and self._clarifier.clarification is not None:
            return f"answers to {len(self._clarifier.clarification.questions)} clarifying question(s)"
        if self._phase == "awaiting_approval" and self._book.plan is not None:
            return f"approval of plan v{self._book.plan.version}"
        if self._phase == "paused":
            return f"raise_budget: {self._reached} was reached"
        return None

    def _publish(self) -> None:
        """Keep the Web UI's 'current details' and the run's event stream in step with the state a
        person acts on."""
        waiting_for = self._waiting_for()
        workflow.set_current_details(
            render_details(
                workflow.info().workflow_id, self._phase, self._book.plan, self._usage, waiting_for
            )
        )
        self._events.observe(self._phase, waiting_for, self._book.plan, self._book.findings, self._usage)

    # -- signals, update, query ----------------------------------------------------------------

    @staticmethod
    def _signal_arg(name: str, raw: RawValue) -> Any:
        """A signal's argument, as the protocol table says (common/models.py SIGNALS), decoded here
        rather than by the SDK: a malformed one is logged and dropped all the same, but its handler has
        run, so the run's waits look again at what a flood of them changes (the history's size,
        Temporal's suggestion to continue as new)."""
        try:
            return workflow.payload_converter().from_payload(raw.payload, SIGNALS[name])
        except Exception as err:  # any payload a sender can forge: dropped, never a failed task
            workflow.logger.warning("dropped a malformed %s signal: %s", name, str(err)[:500])
            return None

    def _is_current(self, what: str, version: int) -> bool:
        if self._phase != "awaiting_approval" or self._book.plan is None:
            workflow.logger.warning(
                "ignored %s for plan v%d: the run is %s, not awaiting approval",
                what,
                version,
                self._phase,
            )
            return False
        if version != self._book.plan.version:
            workflow.logger.warning(
                "ignored %s for stale plan v%d: the current plan is v%d",
                what,
                version,
                self._book.plan.version,
            )
            return False
        return True

    @workflow.signal(name=SIGNAL_APPROVE_PLAN)
    def approve_plan(self, raw: RawValue) -> None:
        signal = self._signal_arg(SIGNAL_APPROVE_PLAN, raw)
        if signal is not None and self._is_current("approval", signal.plan_version):
            self._approved = signal.plan_version

    @workflow.signal(name=SIGNAL_REQUEST_CHANGES)
    def request_changes(self, raw: RawValue) -> None:
        signal = self._signal_arg(SIGNAL_REQUEST_CHANGES, raw)
        if signal is not None and self._is_current("change request", signal.plan_version):
            self._changes = signal

    @workflow.signal(name=SIGNAL_ABORT)
    def abort(self, raw: RawValue) -> None:
        signal = self._signal_arg(SIGNAL_ABORT, raw)
        if signal is None:
            return
        if self._phase in ("done", "aborted", "failed"):
            workflow.logger.warning("ignored abort: the run is already %s", self._phase)
            return
        if self._abort is None:
            self._abort = signal

    @workflow.signal(name=SIGNAL_SKIP_STEP)
    def skip_step(self, raw: RawValue) -> None:
        signal = self._signal_arg(SIGNAL_SKIP_STEP, raw)
        if signal is None:
            return
        step = self._book.step(signal.step_id)
        if step is None or step.status not in ("pending", "running"):
            what = "no such step" if step is None else f"it is {step.status}"
            workflow.logger.warning("ignored skip_step for %s: %s", signal.step_id, what)
            return
        self._book.skipped.add(step.id)
        if step.status == "pending":
            step.status, step.error = "skipped", "skipped by a person"
        else:
            task = self._steps.get(step.id)
            if task is not None:
                task.cancel()  # Cancels the child workflow; its activities receive cancellation.
        self._publish()

    @workflow.signal(name=SIGNAL_ADD_STEP)
    def add_step(self, raw: RawValue) -> None:
        signal = self._signal_arg(SIGNAL_ADD_STEP, raw)
        if signal is None:
            return
        if self._book.plan is None or self._phase in ("done", "aborted", "failed", "reporting"):
            workflow.logger.warning("ignored add_step %r: the run is %s", signal.title, self._phase)
            return
        step_id = self._book.add(signal)
        if step_id is None:
            workflow.logger.warning("ignored add_step %r: the plan has %d steps", signal.title, MAX_STEPS)
            return
        workflow.logger.info("step %s added while the run is %s: %s", step_id, self._phase, signal.title)
        self._publish()

    @workflow.update(name=UPDATE_RAISE_BUDGET)
    def raise_budget(self, raised: RaiseBudget) -> BudgetStatus:
        self._budget.apply(raised)
        return self._budget.status(
            self._usage, workflow.now(), self._budget.reached(self._usage, workflow.now())
        )

    @raise_budget.validator
    def _validate_raise(self, raised: RaiseBudget) -> None:
        if self._phase in ("done", "aborted", "failed"):
            raise ValueError(f"the run is {self._phase}")
        self._budget.check_raise(raised, self._usage, workflow.now())

    @workflow.update(name=UPDATE_ANSWER_CLARIFICATION)
    def answer_clarification(self, answer: AnswerClarification) -> Clarification:
        return self._clarifier.answer(answer)

    @answer_clarification.validator
    def _validate_answer(self, answer: AnswerClarification) -> None:
        self._clarifier.check(self._phase, answer)

    @workflow.update(name=UPDATE_EDIT_PLAN)
    def edit_plan(self, edit: EditPlan) -> Plan:
        return self._install_plan(edit.steps, "edited by a person", keep_completed=True)

    @edit_plan.validator
    def _validate_edit(self, edit: EditPlan) -> None:
        if self._phase != "awaiting_approval" or self._book.plan is None:
            raise ValueError(
                f"the plan can be edited only while it awaits approval; the run is {self._phase}"
            )
        self._book.check_edit(edit)

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> RunStatus:
        return RunStatus(
            phase=self._phase,
            question=self._input.question,
            plan=self._book.plan,
            plan_iterations=self._iterations,
            usage=self._usage,
            waiting_for=self._waiting_for(),
            report_path=self._report_path,
            error=self._error,
            aborted_reason=self._abort.reason if self._abort else None,
            budget=self._budget.status(
                self._usage, workflow.now(), self._reached or self._finished_by_budget
            ),
            continued=self._continued,
            clarification=self._clarifier.clarification,
        )

"""The objects that cross Temporal boundaries: workflow, activity, signal, query and update payloads.

Each of these is serialised into event history, so they evolve only by adding fields with defaults: an
old history must still replay and an old client must still be understood. Nothing here may hold a key,
a client or a connection; those live on the worker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from temporalio.contrib.workflow_streams import WorkflowStreamState

from common.domains import DomainPolicy
from common.names import (
    SIGNAL_ABORT,
    SIGNAL_ADD_STEP,
    SIGNAL_APPROVE_PLAN,
    SIGNAL_REQUEST_CHANGES,
    SIGNAL_SKIP_STEP,
    UPDATE_ANSWER_CLARIFICATION,
    UPDATE_EDIT_PLAN,
    UPDATE_RAISE_BUDGET,
)
from common.sandbox_models import Artifact
from common.tenancy import DEFAULT_TENANT, valid_tenant

MAX_QUESTION_CHARS = 4000
MAX_STEPS = 20
MAX_STEP_TITLE_CHARS = 300
MAX_STEP_DESCRIPTION_CHARS = 4000
MAX_FEEDBACK_CHARS = 8000
MAX_REASON_CHARS = 1000
MAX_STEP_ID_CHARS = 20
# Bounds of what a run may be given: a timer or deadline beyond a year, or budgets beyond these, are
# mistakes, and unbounded numbers overflow Temporal's durations inside the workflow.
MAX_WAIT_SECONDS = 366 * 24 * 3600.0
MAX_TOKEN_BUDGET = 10**12
MAX_COST_BUDGET_USD = 10**6
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(value: str, *, one_line: bool = False) -> str:
    """Text as a person meant it: control characters dropped (they can hide content or break what it
    is shown in), surrounding space stripped, and for a one-line field, line breaks made spaces."""
    value = _CONTROL.sub("", value)
    if one_line:
        value = " ".join(value.split())
    return value.strip()


Phase = Literal[
    "planning",
    "clarifying",  # the planner asked questions before planning; waiting for `answer_clarification`
    "awaiting_approval",
    "paused",  # a budget or the deadline was reached; waiting for `raise_budget` (or `abort`)
    "researching",
    "replanning",
    "reporting",
    "done",
    "aborted",
    "failed",
]
StepKind = Literal["research", "code"]
StepStatus = Literal["pending", "running", "done", "failed", "skipped"]
Role = Literal["planner", "researcher", "coder", "reporter"]
TimeoutPolicy = Literal["approve", "abort"]
# Whether the planner asks clarifying questions before it plans: when the question is ambiguous (its
# own judgement), never, or always (at least one).
ClarifyPolicy = Literal["auto", "never", "always"]
MAX_CLARIFYING_QUESTIONS = 3
MAX_CLARIFYING_QUESTION_CHARS = 300
BudgetPolicy = Literal["pause", "finish"]


class _Strict(BaseModel):
    """For what people write (the run's input, signals, the plan edit): an unknown field is an error,
    so a typo ("plan_verison") is refused instead of silently ignored; infinities and NaN are refused
    too, as numbers nobody means."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Tolerant(BaseModel):
    """For what Cairn itself writes and reads back (results, statuses, activity payloads) and what
    models write: unknown fields are ignored, so an older worker or client can still read what a newer
    one wrote during a rolling upgrade, and a model's extra keys are dropped rather than refused."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------------
# The run's input, plan and result.


class RunRequest(_Strict):
    """What a person asks for when starting a run (the API's `POST /v1/runs` body): the question and
    the run's options. `{"question": "..."}` alone is valid; everything else has a default."""

    question: str
    auto_approve: bool = False
    max_plan_iterations: int = Field(default=2, ge=0, le=10)
    max_parallel_steps: int = Field(default=3, ge=1, le=32)
    max_steps: int = Field(default=8, ge=1, le=MAX_STEPS)
    approval_timeout_seconds: float = Field(default=24 * 3600, gt=0, le=MAX_WAIT_SECONDS)
    on_approval_timeout: TimeoutPolicy = "abort"
    max_plan_attempts: int = Field(default=3, ge=1, le=10)
    # The researcher's budgets per step: tool calls, tokens (all its model calls together) and the
    # working memory its messages must fit in; at a limit it writes its finding from what it has.
    researcher_tool_calls: int = Field(default=8, ge=0, le=100)
    researcher_tokens: int = Field(default=60_000, ge=1000, le=10_000_000)
    researcher_context_tokens: int = Field(default=8000, ge=1000, le=1_000_000)
    # The run's budgets, counted in workflow state (exact through crashes). None is no limit. At a
    # limit the run pauses for `raise_budget`, or with on_budget="finish" writes its report from
    # what it has. The reporter's one call is allowed past a limit, so a run always ends in a report.
    token_budget: int | None = Field(default=None, ge=1, le=MAX_TOKEN_BUDGET)
    cost_budget_usd: float | None = Field(default=None, gt=0, le=MAX_COST_BUDGET_USD)
    deadline_seconds: float | None = Field(default=None, gt=0, le=MAX_WAIT_SECONDS)
    on_budget: BudgetPolicy = "pause"
    # Clarifying questions before planning; unanswered, the approval timeout and its policy apply
    # (`approve`: plan without answers; `abort`).
    clarify: ClarifyPolicy = "auto"
    # Whether the researcher also searches the tenant's library (the sources and findings of its
    # finished runs). None: yes for follow-ups and scheduled runs, no otherwise.
    library: bool | None = None

    @field_validator("question")
    @classmethod
    def _question_shape(cls, value: str) -> str:
        value = clean_text(value)
        if not value:
            raise ValueError("the question is empty")
        if len(value) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question is {len(value)} characters; the limit is {MAX_QUESTION_CHARS}")
        return value


class ResearchInput(RunRequest):
    """Input of ResearchWorkflow: the request, whose it is, and what a continuation carries."""

    # Whose run this is (common/tenancy.py): set by the client or the API from who is asking, never
    # taken from a request body. It scopes the documents the researcher searches and where the
    # report is written.
    tenant: Annotated[str, AfterValidator(valid_tenant)] = DEFAULT_TENANT
    # The domains the run may search and read (common/domains.py): set, like the tenant, by the client
    # or the API from the deployment's and the tenant's configuration, never from a request body.
    domains: DomainPolicy | None = None
    # Set by the workflow itself when it continues as new: the state a long run carries forward.
    carried: Carried | None = None
    # Living research (workflows/living.py), set by the API or a schedule, never by a request body:
    # the run this one follows up, or the schedule that started it. Either gives the run a
    # predecessor whose findings its planner sees and its report's "What changed since" compares.
    follows: str | None = Field(default=None, max_length=200)
    schedule_id: str | None = Field(default=None, max_length=200)


def _step_title(value: str) -> str:
    value = clean_text(value, one_line=True)
    if not value:
        raise ValueError("a step title is empty")
    if len(value) > MAX_STEP_TITLE_CHARS:
        raise ValueError(f"a step title is longer than {MAX_STEP_TITLE_CHARS} characters")
    return value


def _step_description(value: str) -> str:
    if len(value) > MAX_STEP_DESCRIPTION_CHARS:
        raise ValueError(f"a step description is longer than {MAX_STEP_DESCRIPTION_CHARS} characters")
    return clean_text(value)


# A step's title and description, as a person or a model writes them: one set of rules for both.
StepTitle = Annotated[str, AfterValidator(_step_title)]
StepDescription = Annotated[str, AfterValidator(_step_description)]


class StepSpec(_Strict):
    """A step as a person or the planner writes it. `id` is optional: a new step gets one."""

    id: str | None = Field(default=None, max_length=MAX_STEP_ID_CHARS)
    title: StepTitle
    kind: StepKind = "research"
    description: StepDescription = ""


class PlanStep(Tolerant):
    id: str
    title: str
    kind: StepKind = "research"
    description: str = ""
    status: StepStatus = "pending"
    error: str | None = None


class Plan(Tolerant):
    version: int
    steps: list[PlanStep]
    rationale: str = ""


class Usage(Tolerant):
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # US dollars, from the worker's CAIRN_MODEL_PRICES; models with no price count 0.
    cost_usd: float = 0.0

    def add(self, other: Usage) -> None:
        self.llm_calls += other.llm_calls
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd

    @classmethod
    def of_call(cls, input_tokens: int, output_tokens: int, cost_usd: float) -> Usage:
        """One LLM call's usage."""
        return cls(llm_calls=1, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost_usd)

    @classmethod
    def of_calls(cls, calls: Iterable[Mapping[str, Any]]) -> Usage:
        """The usage of calls recorded as `{"input_tokens", "output_tokens", "cost_usd"}` (how the
        researcher graph keeps them in its state)."""
        total = cls()
        for call in calls:
            total.add(cls.of_call(call["input_tokens"], call["output_tokens"], call["cost_usd"]))
        return total

    def describe(self) -> str:
        """The spend in words, as the CLI, `cairn watch` and the Web UI's details show it."""
        calls = "1 LLM call" if self.llm_calls == 1 else f"{self.llm_calls} LLM calls"
        return (
            f"{calls}, {self.input_tokens:,} input and {self.output_tokens:,} output tokens, "
            f"${self.cost_usd:.4f}"
        )


class Source(Tolerant):
    """Something a finding rests on: a URL or a path of the user's documents."""

    id: str
    title: str = ""
    url: str | None = None
    path: str | None = None
    # How the run came by it: "fetched" (a page read in full), "searched" (a web search hit),
    # "corpus" (a passage of the user's documents) or "library" (the tenant's library of earlier runs).
    via: str = ""


class Claim(Tolerant):
    """One statement of a finding and the ids of the sources (in `Finding.sources`) it rests on."""

    text: str
    source_ids: list[str] = Field(default_factory=list)


class Finding(Tolerant):
    step_id: str
    title: str
    summary: str
    sources: list[Source] = Field(default_factory=list)
    claims: list[Claim] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    # Files a coder step's program made (charts, tables), stored on the worker, linked from the report.
    artifacts: list[Artifact] = Field(default_factory=list)


class ResearchResult(Tolerant):
    workflow_id: str
    question: str
    report: str
    sources: list[Source] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    aborted: bool = False
    abort_reason: str | None = None
    report_path: str | None = None
    plan: Plan | None = None
    # The structured findings (claims and their sources) the report was written from: what a later
    # run of the same question compares itself with.
    findings: list[Finding] = Field(default_factory=list)
    # Why the run's findings did not join the tenant's library, when they did not.
    library_error: str | None = None


class BudgetStatus(Tolerant):
    """Spent and remaining against each limit; a None limit is unlimited."""

    token_budget: int | None = None
    tokens_spent: int = 0
    tokens_remaining: int | None = None
    cost_budget_usd: float | None = None
    cost_spent_usd: float = 0.0
    cost_remaining_usd: float | None = None
    deadline: str | None = None  # ISO 8601, UTC
    seconds_remaining: float | None = None
    reached: str | None = None  # which limit stopped new work, when one has


class RunStatus(Tolerant):
    """What the `status` query answers."""

    phase: Phase
    question: str
    plan: Plan | None = None
    plan_iterations: int = 0
    usage: Usage = Field(default_factory=Usage)
    waiting_for: str | None = None
    report_path: str | None = None
    error: str | None = None
    aborted_reason: str | None = None
    budget: BudgetStatus = Field(default_factory=BudgetStatus)
    continued: int = 0  # how many times the run has continued as new
    clarification: Clarification | None = None  # the planner's questions, and the answer once given


# ---------------------------------------------------------------------------------------------------
# Signals and updates.


class ApprovePlan(_Strict):
    plan_version: int


def _persons_text(value: str, what: str) -> str:
    """A person's free text to the planner (feedback, an answer): cleaned, not empty, bounded."""
    value = clean_text(value)
    if not value:
        raise ValueError(f"{what} is empty")
    if len(value) > MAX_FEEDBACK_CHARS:
        raise ValueError(f"{what} is longer than {MAX_FEEDBACK_CHARS} characters")
    return value


class RequestChanges(_Strict):
    plan_version: int
    feedback: str

    @field_validator("feedback")
    @classmethod
    def _feedback_shape(cls, value: str) -> str:
        return _persons_text(value, "the feedback")


class Clarification(Tolerant):
    """The planner's clarifying questions and the person's answer (None until answered, and for good
    when the wait timed out and the run went on without one)."""

    questions: list[str] = Field(default_factory=list)
    answer: str | None = None
    timed_out: bool = False


class AnswerClarification(_Strict):
    """Update `answer_clarification`: the person's answer to the questions, in one text."""

    answer: str

    @field_validator("answer")
    @classmethod
    def _answer_shape(cls, value: str) -> str:
        return _persons_text(value, "the answer")


class AbortRun(_Strict):
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)

    @field_validator("reason")
    @classmethod
    def _reason_shape(cls, value: str) -> str:
        return clean_text(value)


class EditPlan(_Strict):
    plan_version: int
    steps: list[StepSpec] = Field(max_length=MAX_STEPS)


class SkipStep(_Strict):
    """Signal `skip_step`: a pending step will not run; a running one is cancelled."""

    step_id: str = Field(max_length=MAX_STEP_ID_CHARS)


class AddStep(StepSpec):
    """Signal `add_step`: a new step joins the plan while research runs (`id` is assigned)."""


class RaiseBudget(_Strict):
    """Update `raise_budget`: new limits (absolute, not increments); fields left out stay as they are.
    `deadline_seconds` counts from the run's start."""

    token_budget: int | None = Field(default=None, ge=1, le=MAX_TOKEN_BUDGET)
    cost_budget_usd: float | None = Field(default=None, gt=0, le=MAX_COST_BUDGET_USD)
    deadline_seconds: float | None = Field(default=None, gt=0, le=MAX_WAIT_SECONDS)


# What each signal and update of ResearchWorkflow carries (and what an update answers): the client
# builds them from this table and the workflow decodes them with it, so the two sides cannot disagree.
SIGNALS: dict[str, type[BaseModel]] = {
    SIGNAL_APPROVE_PLAN: ApprovePlan,
    SIGNAL_REQUEST_CHANGES: RequestChanges,
    SIGNAL_ABORT: AbortRun,
    SIGNAL_SKIP_STEP: SkipStep,
    SIGNAL_ADD_STEP: AddStep,
}
UPDATES: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    UPDATE_EDIT_PLAN: (EditPlan, Plan),
    UPDATE_RAISE_BUDGET: (RaiseBudget, BudgetStatus),
    UPDATE_ANSWER_CLARIFICATION: (AnswerClarification, Clarification),
}


# ---------------------------------------------------------------------------------------------------
# Continue-as-new.


class Carried(Tolerant):
    """What a run hands to its continuation: enough to go on without repeating any work."""

    plan: Plan
    findings: list[Finding] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    iterations: int = 0
    next_step: int = 1
    started_at: str  # ISO 8601: the first run's start, for the deadline
    continued: int = 0
    budget: RaiseBudget | None = None  # limits raised during the run
    # Where the continuation picks up: "review" (between rounds) or "approval" (a plan awaits approval
    # since `awaiting_since`, ISO 8601, so its approval timeout keeps counting from then).
    stage: Literal["review", "approval"] = "review"
    awaiting_since: str | None = None
    # The run's event stream (its log and offsets), so watchers read on without a gap or a repeat.
    stream: WorkflowStreamState | None = None
    clarification: Clarification | None = None  # for the report's method section
    # The predecessor the run found before it planned (living research), for its report's end.
    prior: PriorRun | None = None

    @field_validator("started_at", "awaiting_since")
    @classmethod
    def _instant(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as err:
            raise ValueError(f"{value[:40]!r} is not an ISO 8601 time") from err
        if moment.tzinfo is None:
            raise ValueError(f"{value[:40]!r} has no time zone")
        return value


# ---------------------------------------------------------------------------------------------------
# Activities and child workflows.


class ChatMessage(Tolerant):
    role: Literal["system", "user", "assistant"]
    content: str


class StructuredOutput(Tolerant):
    """The answer's shape, for a call that expects JSON: a JSON schema in the form strict structured
    output accepts (common/structured.py builds it from the pydantic model that validates the reply)."""

    name: str
    json_schema: dict[str, Any]
    strict: bool = True


class ChatRequest(Tolerant):
    role: Role
    messages: list[ChatMessage]
    purpose: str = ""
    # Set when the reply must be JSON of a schema: the activity asks the provider in its own terms
    # (response_format), falling back as far as the server requires.
    output: StructuredOutput | None = None


class ChatResponse(Tolerant):
    content: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    # How the server was asked for JSON: json_schema, json_object or prompt ("" for prose).
    output_mode: str = ""


class StepInput(Tolerant):
    question: str
    step: PlanStep
    context: str = ""
    # Coder steps: how many times the model may fix a failing program before the step reports failure.
    max_code_fixes: int = 2
    # Research steps: the run's archive of fetched pages (shared by its steps) and the budgets.
    archive_scope: str = ""
    tool_calls: int = 8
    tokens: int = 60_000
    context_tokens: int = 8000
    # Whose run the step belongs to: the researcher searches this tenant's documents only.
    tenant: str = DEFAULT_TENANT
    domains: DomainPolicy | None = None  # the run's domain policy, for web_search and fetch_url
    # Whether corpus_search and recall also search the tenant's library.
    library: bool = False


class PredecessorRequest(Tolerant):
    """Activity `runs.predecessor`: the run `follows` names, or the last completed run of schedule
    `schedule_id`, if it is tenant `tenant`'s (`workflow_id` is the run asking, never its own)."""

    workflow_id: str
    tenant: str = DEFAULT_TENANT
    follows: str | None = None
    schedule_id: str | None = None


class AdmitRun(Tolerant):
    """Activity `runs.admit`: scheduled run `workflow_id` of `tenant`, asking to run with the budgets
    its schedule gave it (None: no such limit of its own)."""

    workflow_id: str
    tenant: str = DEFAULT_TENANT
    token_budget: int | None = None
    cost_budget_usd: float | None = None


class Admitted(Tolerant):
    """What `runs.admit` lets a scheduled run do: its budgets under the tenant's daily allowance, and
    the tenant's domain policy as the worker's configuration has it now."""

    token_budget: int | None = None
    cost_budget_usd: float | None = None
    domains: DomainPolicy | None = None


class PriorRun(Tolerant):
    """What a run knows of its predecessor: when it finished and what it found."""

    workflow_id: str
    question: str
    finished_at: str  # ISO 8601, UTC
    findings: list[Finding] = Field(default_factory=list)


class LibraryAdd(Tolerant):
    """Activity `library.add`: a finished run's archive (pages read in full) and findings join its
    tenant's library."""

    workflow_id: str
    tenant: str = DEFAULT_TENANT
    question: str = ""
    findings: list[Finding] = Field(default_factory=list)


class LibraryAdded(Tolerant):
    pages: int = 0  # pages of the run's archive copied in full
    findings: int = 0


class SaveReport(Tolerant):
    workflow_id: str
    markdown: str
    tenant: str = DEFAULT_TENANT  # reports are kept per tenant


class SavedReport(Tolerant):
    path: str


Carried.model_rebuild()
ResearchInput.model_rebuild()

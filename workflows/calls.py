"""How workflows call activities: one place for timeouts, retry policies and structured-output parsing.

Deterministic only: no I/O, no clocks, no environment. Every activity call states its timeouts and a
bounded retry policy here, so a change of policy is one edit and every workflow agrees.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    from common.models import ChatMessage, ChatRequest, ChatResponse, Role, StepSpec, Usage
    from common.names import LLM_CHAT, llm_task_queue

LLM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
)
# The client's own request timeout is 120 s; the activity gets a margin on top of it.
LLM_START_TO_CLOSE = timedelta(seconds=150)
LLM_SCHEDULE_TO_CLOSE = timedelta(minutes=30)
# Activities heartbeat every second while they wait (activities/heartbeat.py); four missed beats mean
# the worker died, and the call is retried elsewhere. Kept short so a run moves on within seconds of
# a crash; see the README's "Crash recovery" for every value that bounds it.
HEARTBEAT_TIMEOUT = timedelta(seconds=4)
# A workflow task that a dying worker held is handed out again after this (the default is 10 s). Not
# lower: a fresh worker replaying a long history under load can need 2-4 s for one task, and a
# timeout then would only repeat that work.
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=5)
LLM_HEARTBEAT = HEARTBEAT_TIMEOUT

ERR_MALFORMED_OUTPUT = "MalformedModelOutput"

T = TypeVar("T")


async def chat(role: Role, messages: list[ChatMessage], summary: str, usage: Usage) -> ChatResponse:
    """One `llm.chat` activity. Adds the call's tokens to `usage`, which lives in workflow state."""
    response = await workflow.execute_activity(
        LLM_CHAT,
        ChatRequest(role=role, messages=messages, purpose=summary),
        result_type=ChatResponse,
        # The LLM queue: the server caps its dispatch rate across all workers together (worker.py).
        task_queue=llm_task_queue(workflow.info().task_queue),
        start_to_close_timeout=LLM_START_TO_CLOSE,
        schedule_to_close_timeout=LLM_SCHEDULE_TO_CLOSE,
        heartbeat_timeout=LLM_HEARTBEAT,
        retry_policy=LLM_RETRY,
        summary=summary,
    )
    usage.add(
        Usage(
            llm_calls=1,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cost_usd=response.cost_usd,
        )
    )
    return response


async def chat_structured(
    role: Role,
    messages: list[ChatMessage],
    parse: Callable[[str], T],
    *,
    attempts: int,
    summary: str,
    usage: Usage,
) -> T:
    """Ask for JSON and validate it; on a malformed reply, show the model its error and ask again.

    Re-asking lives in the workflow, not in the activity, so each attempt is its own recorded call
    and a crash between attempts repeats none of them.
    """
    conversation = list(messages)
    problem = ""
    for attempt in range(1, attempts + 1):
        label = summary if attempt == 1 else f"{summary} (re-ask {attempt - 1})"
        reply = await chat(role, conversation, label, usage)
        try:
            return parse(reply.content)
        except ValueError as err:
            problem = str(err)
            workflow.logger.warning("%s: malformed model output (%s)", summary, problem)
            conversation += [
                ChatMessage(role="assistant", content=reply.content),
                ChatMessage(
                    role="user",
                    content=f"That reply was not valid: {problem}. Answer again with the JSON object only.",
                ),
            ]
    raise ApplicationError(
        f"the {role} returned malformed output {attempts} times; last problem: {problem}",
        type=ERR_MALFORMED_OUTPUT,
        non_retryable=True,
    )


class DraftStep(StepSpec):
    """A step as the model writes it: unknown keys are dropped rather than refused."""

    model_config = ConfigDict(extra="ignore")


class PlanDraft(BaseModel):
    """A plan as the model writes it. Extra keys are tolerated: models add them freely."""

    model_config = ConfigDict(extra="ignore")
    rationale: str = ""
    steps: list[DraftStep] = Field(min_length=1)


class ReviewDraft(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sufficient: bool
    rationale: str = ""
    steps: list[DraftStep] = Field(default_factory=list)


def json_object(text: str) -> object:
    """The first JSON object in a reply, tolerating code fences and chatter around it."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("the reply contains no JSON object")
    try:
        return json.loads(text[start : end + 1])
    except json.JSONDecodeError as err:
        raise ValueError(f"the JSON does not parse ({err.msg} at position {err.pos})") from err


def _validated(model: type[BaseModel], text: str) -> BaseModel:
    try:
        return model.model_validate(json_object(text))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the object"
        raise ValueError(f"{where}: {first['msg']}") from err


def parse_plan(text: str) -> PlanDraft:
    draft = _validated(PlanDraft, text)
    assert isinstance(draft, PlanDraft)
    return draft


def parse_review(text: str) -> ReviewDraft:
    draft = _validated(ReviewDraft, text)
    assert isinstance(draft, ReviewDraft)
    return draft

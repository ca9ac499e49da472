"""How workflows call activities: one place for timeouts, retry policies and structured output.

Deterministic only: no I/O, no clocks, no environment. Every activity call states its timeouts and a
bounded retry policy here, so a change of policy is one edit and every workflow agrees.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from common import errors

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from common.models import (
        AdmitRun,
        Admitted,
        ChatMessage,
        ChatRequest,
        ChatResponse,
        LibraryAdd,
        LibraryAdded,
        PredecessorRequest,
        PriorRun,
        Role,
        SavedReport,
        SaveReport,
        StructuredOutput,
        Usage,
    )
    from common.names import (
        LIBRARY_ADD,
        LLM_CHAT,
        REPORT_SAVE,
        RUNS_ADMIT,
        RUNS_PREDECESSOR,
        SANDBOX_EXEC,
        llm_task_queue,
    )
    from common.sandbox_models import ExecRequest, ExecResult
    from common.structured import output_spec, validated

# A failed call is tried again after 0.2 s, then 0.4, 0.8, ... A provider's Retry-After overrides
# (activities/llm.py); a call lost with a dead worker is due again at once on a live one.
LLM_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
)
# The client's own request timeout is 120 s; the activity gets a margin on top of it.
LLM_START_TO_CLOSE = timedelta(seconds=150)
LLM_SCHEDULE_TO_CLOSE = timedelta(minutes=30)
# Activities heartbeat every second while they wait (activities/heartbeat.py; the SDK sends at most
# one every 0.8 x this timeout): two seconds without one mean the worker died, and the call is retried
# elsewhere 0.2 s later. Kept short so a run moves on within seconds of a crash, long enough that a
# busy worker is not taken for a dead one (the chaos suite and bench/scale_out.py check both);
# docs/operations.md "Crash recovery" has every value that bounds it.
HEARTBEAT_TIMEOUT = timedelta(seconds=2)
# A workflow task that a dying worker held is handed out again after this (the default is 10 s). Not
# lower: a fresh worker replaying a long history under load can need 2-4 s for one task, and a
# timeout then would only repeat that work.
WORKFLOW_TASK_TIMEOUT = timedelta(seconds=5)
LLM_HEARTBEAT = HEARTBEAT_TIMEOUT


# Tools of the researcher graph: a failed attempt is retried twice; the third failure reaches the model
# as a typed tool error (activities/researcher/nodes.py), so one dead site does not sink the step.
TOOL_ATTEMPTS = 3
TOOL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=TOOL_ATTEMPTS,
)
TOOL_START_TO_CLOSE = timedelta(seconds=90)
# An MCP tool's call: each server's own `timeout_seconds` (at most an hour) bounds it inside; heartbeats
# find a dead worker in seconds.
MCP_START_TO_CLOSE = timedelta(hours=1, minutes=1)
# A program's own wall-clock limit in the sandbox. The activity gets start-up and the host's kill grace
# on top; a worker crash costs an attempt, and every attempt runs in a fresh container writing the same
# artifacts, so several crashes in a row must not fail the step.
SANDBOX_TIMEOUT_SECONDS = 60.0
SANDBOX_START_TO_CLOSE = timedelta(seconds=SANDBOX_TIMEOUT_SECONDS + 60)
SANDBOX_RETRY = RetryPolicy(
    maximum_attempts=8,
    maximum_interval=timedelta(seconds=5),
    non_retryable_error_types=[errors.SANDBOX_IMAGE_MISSING, errors.SANDBOX_INVALID_REQUEST],
)
REPORT_SAVE_START_TO_CLOSE = timedelta(seconds=30)
REPORT_SAVE_RETRY = RetryPolicy(maximum_attempts=5)
# Reading a predecessor is a few visibility and history reads; a missing or foreign run is final.
PREDECESSOR_START_TO_CLOSE = timedelta(seconds=60)
PREDECESSOR_RETRY = RetryPolicy(maximum_attempts=5, non_retryable_error_types=[errors.INVALID_INPUT])

M = TypeVar("M", bound=BaseModel)


async def chat(
    role: Role,
    messages: list[ChatMessage],
    summary: str,
    usage: Usage,
    output: StructuredOutput | None = None,
) -> ChatResponse:
    """One `llm.chat` activity. Adds the call's tokens to `usage`, which lives in workflow state."""
    response = await workflow.execute_activity(
        LLM_CHAT,
        ChatRequest(role=role, messages=messages, purpose=summary, output=output),
        result_type=ChatResponse,
        # The LLM queue: the server caps its dispatch rate across all workers together (worker.py).
        task_queue=llm_task_queue(workflow.info().task_queue),
        start_to_close_timeout=LLM_START_TO_CLOSE,
        schedule_to_close_timeout=LLM_SCHEDULE_TO_CLOSE,
        heartbeat_timeout=LLM_HEARTBEAT,
        retry_policy=LLM_RETRY,
        summary=summary,
    )
    usage.add(Usage.of_call(response.input_tokens, response.output_tokens, response.cost_usd))
    return response


async def chat_structured(
    role: Role,
    messages: list[ChatMessage],
    model: type[M],
    *,
    name: str,
    attempts: int,
    summary: str,
    usage: Usage,
) -> M:
    """Ask for JSON of `model`'s schema and validate the reply with `model`; on a reply that fails
    validation (a server that honours the schema only loosely, or a semantic check the schema cannot
    state), show the model its error and ask again.

    Re-asking lives in the workflow, not in the activity, so each attempt is its own recorded call
    and a crash between attempts repeats none of them.
    """
    output = output_spec(name, model)
    conversation = list(messages)
    problem = ""
    for attempt in range(1, attempts + 1):
        label = summary if attempt == 1 else f"{summary} (re-ask {attempt - 1})"
        reply = await chat(role, conversation, label, usage, output=output)
        try:
            return validated(model, reply.content)
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
        type=errors.MALFORMED_MODEL_OUTPUT,
        non_retryable=True,
    )


async def save_report(markdown: str, tenant: str) -> SavedReport:
    """The `report.save` activity: the run's report written under the worker's data directory, in
    the tenant's own part of it."""
    return await workflow.execute_activity(
        REPORT_SAVE,
        SaveReport(workflow_id=workflow.info().workflow_id, markdown=markdown, tenant=tenant),
        result_type=SavedReport,
        start_to_close_timeout=REPORT_SAVE_START_TO_CLOSE,
        retry_policy=REPORT_SAVE_RETRY,
        summary="save report",
    )


async def find_predecessor(request: PredecessorRequest) -> PriorRun | None:
    """The `runs.predecessor` activity: the run this one follows up, or its schedule's previous
    completed run; None when a scheduled run has none yet (its first)."""
    found: PriorRun | None = await workflow.execute_activity(
        RUNS_PREDECESSOR,
        request,
        result_type=PriorRun | None,  # type: ignore[arg-type]
        start_to_close_timeout=PREDECESSOR_START_TO_CLOSE,
        retry_policy=PREDECESSOR_RETRY,
        summary="read the earlier run",
    )
    return found


# Admitting a scheduled run is a few visibility reads and ledger writes. A refusal (a limit reached) is
# final for this run; a bad input too. A ledger or visibility that does not answer is tried again, a
# bounded number of times, and then fails the run, which must not research unadmitted.
ADMISSION_START_TO_CLOSE = timedelta(seconds=60)
ADMISSION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,
    non_retryable_error_types=[errors.QUOTA_EXCEEDED, errors.INVALID_INPUT],
)


async def admit_run(request: AdmitRun) -> Admitted:
    """The `runs.admit` activity: a scheduled run's budgets under its tenant's daily allowance and the
    tenant's domain policy now, or a QuotaExceeded failure naming the limit that stops it."""
    return await workflow.execute_activity(
        RUNS_ADMIT,
        request,
        result_type=Admitted,
        start_to_close_timeout=ADMISSION_START_TO_CLOSE,
        retry_policy=ADMISSION_RETRY,
        summary="admit under the tenant's quotas",
    )


# Copying a run's archive into the library reads and indexes every page it read: seconds, heartbeating.
LIBRARY_ADD_START_TO_CLOSE = timedelta(minutes=5)
LIBRARY_ADD_RETRY = RetryPolicy(maximum_attempts=5, non_retryable_error_types=[errors.INVALID_INPUT])


async def add_to_library(request: LibraryAdd) -> LibraryAdded:
    """The `library.add` activity: the run's archive and findings join its tenant's library."""
    return await workflow.execute_activity(
        LIBRARY_ADD,
        request,
        result_type=LibraryAdded,
        start_to_close_timeout=LIBRARY_ADD_START_TO_CLOSE,
        heartbeat_timeout=timedelta(seconds=30),
        retry_policy=LIBRARY_ADD_RETRY,
        summary="add to the library",
    )


async def run_code(program: str, step_id: str, summary: str, *, tenant: str, run_id: str) -> ExecResult:
    """The `sandbox.exec` activity: one program in a fresh sandbox container. A failing program is a
    result (its exit code, output and limits hit), not a failure; an unavailable sandbox is. Its
    artifacts are kept in run `run_id`'s directory, in `tenant`'s part of the worker's."""
    return await workflow.execute_activity(
        SANDBOX_EXEC,
        ExecRequest(
            code=program,
            step=step_id,
            timeout_seconds=SANDBOX_TIMEOUT_SECONDS,
            tenant=tenant,
            run_id=run_id,
        ),
        result_type=ExecResult,
        start_to_close_timeout=SANDBOX_START_TO_CLOSE,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry_policy=SANDBOX_RETRY,
        summary=summary,
    )

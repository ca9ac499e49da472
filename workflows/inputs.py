"""How a workflow takes its input: exactly one JSON object, validated by the workflow's own model.

A run can be started by anyone who reaches Temporal (`temporal workflow start` with no input, two inputs,
a number, a payload in an encoding nobody reads), and a workflow that cannot read its input must fail
at once with the reason, never retry a workflow task that can never succeed. Workflows therefore take
`*inputs` undecoded (the SDK hands over plain JSON values when a run method has no single typed
parameter) and validate here; a payload that cannot be decoded at all already fails with a
non-retryable error in Cairn's data converter (common/plugin.py).

Pure and deterministic.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.exceptions import ApplicationError

from common import errors

M = TypeVar("M", bound=BaseModel)


def explain(err: ValidationError) -> str:
    """pydantic's complaints in one line: `field: message; field: message`."""
    parts = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def one_input(workflow_type: str, inputs: tuple[Any, ...], model: type[M]) -> M:
    """The single input of a run, as `model`; a non-retryable InvalidInput failure otherwise."""
    if len(inputs) != 1:
        raise ApplicationError(
            f"{workflow_type} takes exactly one input, a JSON object; it was given {len(inputs)}",
            type=errors.INVALID_INPUT,
            non_retryable=True,
        )
    value = inputs[0]
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as err:
        raise ApplicationError(
            f"invalid input for {workflow_type}: {explain(err)}",
            type=errors.INVALID_INPUT,
            non_retryable=True,
        ) from None

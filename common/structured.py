"""The shapes Cairn asks models to answer in, and the JSON schema each such request carries.

One pydantic model per answer is both the schema sent to the provider (`response_format` of type
`json_schema`) and the validator of the reply, so the two cannot drift. Where the valid values are known
when the call is made (the step ids a revision or a review may name, the source ids a finding may cite)
the model is built for that call with those values as an enum, so the provider enforces them instead of
a re-ask catching them.

Providers take a subset of JSON Schema in strict mode (OpenAI refuses a strict schema whose objects lack
`additionalProperties: false` or leave a property out of `required`, and keywords such as `default` or
`minLength`); `strict_json_schema` rewrites pydantic's schema into that subset. Dropped keywords are still
enforced: the reply is validated by the full pydantic model.

Pure and deterministic: workflows build schemas here, so nothing here may read a clock, a file or the
environment.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator

from common.models import (
    MAX_CLARIFYING_QUESTION_CHARS,
    MAX_CLARIFYING_QUESTIONS,
    StepDescription,
    StepKind,
    StepTitle,
    StructuredOutput,
    Tolerant,
)

# Keywords a strict schema may not carry (OpenAI's structured outputs); pydantic still checks them.
_NOT_PERMITTED = frozenset(
    {
        "default",
        "title",
        "minLength",
        "maxLength",
        "patternProperties",
        "unevaluatedProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "uniqueItems",
        "examples",
    }
)
M = TypeVar("M", bound=BaseModel)
MAX_CLAIMS = 12
MAX_CLAIM_CHARS = 1000
MAX_SUMMARY_CHARS = 6000
MAX_RATIONALE_CHARS = 2000


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema in the form strict structured output accepts: references inlined, every
    object closed (`additionalProperties: false`) with every property required (an optional field is
    already nullable in pydantic's schema), and keywords strict mode refuses left out."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})

    def walk(node: Any) -> Any:
        """One schema node (never a mapping of property names, whose keys are data, not keywords)."""
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
            return walk(merged)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _NOT_PERMITTED:
                continue
            if key == "properties":
                out[key] = {name: walk(sub) for name, sub in value.items()}
            elif key in ("items", "anyOf", "prefixItems", "additionalProperties"):
                out[key] = walk(value)
            else:
                out[key] = value  # enum values, descriptions, bounds: data, kept as they are
        if out.get("type") == "object" or "properties" in out:
            out["type"] = "object"
            out.setdefault("properties", {})
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        if "const" in out and "enum" not in out:  # A one-value Literal: an enum is understood more widely.
            out["enum"] = [out.pop("const")]
        return out

    schema = walk(raw)
    assert isinstance(schema, dict)
    return schema


def output_spec(name: str, model: type[BaseModel]) -> StructuredOutput:
    return StructuredOutput(name=name, json_schema=strict_json_schema(model), strict=True)


def json_object(text: str) -> object:
    """The first JSON object in a reply, tolerating code fences and chatter around it (a server that
    follows the schema only by prompt may add both)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("the reply contains no JSON object")
    try:
        return json.loads(text[start : end + 1])
    except json.JSONDecodeError as err:
        raise ValueError(f"the JSON does not parse ({err.msg} at position {err.pos})") from err


def validated(model: type[M], text: str) -> M:
    """The reply parsed and validated by `model`; a ValueError names the first problem, in words the
    model can act on when it is shown back to it."""
    try:
        return model.model_validate(json_object(text))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the object"
        got = first.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) and len(repr(got)) <= 80 else ""
        raise ValueError(f"{where}: {first['msg'].removeprefix('Value error, ')}{shown}") from err


# ---------------------------------------------------------------------------------------------------
# Plans and reviews, as the planner writes them.


class DraftStep(Tolerant):
    title: StepTitle = Field(description="a short imperative title")
    kind: StepKind = Field(
        default="research",
        description="research, or code for a step that needs computation, data processing or charts",
    )
    description: StepDescription = Field(default="", description="what to find out or compute")

    @property
    def step_id(self) -> str | None:
        return getattr(self, "id", None)


class PlanDraft(Tolerant):
    rationale: str = Field(default="", max_length=MAX_RATIONALE_CHARS, description="why this plan")
    steps: list[DraftStep] = Field(min_length=1)


class ReviewDraft(Tolerant):
    sufficient: bool = Field(description="true when the findings answer the question well enough")
    rationale: str = Field(default="", max_length=MAX_RATIONALE_CHARS)
    steps: list[DraftStep] = Field(default_factory=list, description="new steps; none when sufficient")


def _with_ids(step_ids: Sequence[str]) -> type[DraftStep]:
    """A step that may name one of the plan's existing steps (to keep or reword it) or none (a new
    step). With no existing steps there is nothing to name and the field is left out."""
    if not step_ids:
        return DraftStep
    known: Any = Literal[tuple(step_ids)]  # type: ignore[valid-type]
    return create_model(
        "DraftStep",
        __base__=DraftStep,
        id=(known | None, Field(default=None, description="an existing step's id, or null for a new step")),
    )


@functools.lru_cache(maxsize=256)
def plan_model(max_steps: int, step_ids: tuple[str, ...] = ()) -> type[PlanDraft]:
    """The plan a planner writes: between 1 and `max_steps` steps, each naming an existing step id or
    none. Cached: models are immutable and the same arguments come back every round."""
    step = _with_ids(step_ids)
    return create_model(
        "Plan",
        __base__=PlanDraft,
        steps=(list[step], Field(min_length=1, max_length=max_steps)),  # type: ignore[valid-type]
    )


@functools.lru_cache(maxsize=256)
def review_model(max_steps: int, step_ids: tuple[str, ...] = ()) -> type[ReviewDraft]:
    """The reviewer's verdict: sufficient or not, and at most `max_steps` new steps."""
    step = _with_ids(step_ids)
    return create_model(
        "Review",
        __base__=ReviewDraft,
        steps=(list[step], Field(default_factory=list, max_length=max_steps)),  # type: ignore[valid-type]
    )


# ---------------------------------------------------------------------------------------------------
# Clarifying questions, as the planner asks them before it plans.


class ClarifyDraft(Tolerant):
    questions: list[str] = Field(
        default_factory=list,
        max_length=MAX_CLARIFYING_QUESTIONS,
        description="short questions for the person; none when the question is clear",
    )

    @field_validator("questions")
    @classmethod
    def _questions_shape(cls, value: list[str]) -> list[str]:
        cleaned = [" ".join(q.split()) for q in value]
        if any(not q for q in cleaned):
            raise ValueError("a question is empty")
        if any(len(q) > MAX_CLARIFYING_QUESTION_CHARS for q in cleaned):
            raise ValueError(f"a question is longer than {MAX_CLARIFYING_QUESTION_CHARS} characters")
        return cleaned


@functools.lru_cache(maxsize=4)
def clarify_model(at_least_one: bool) -> type[ClarifyDraft]:
    """Up to MAX_CLARIFYING_QUESTIONS questions; with `at_least_one` (clarify="always"), one or more."""
    return create_model(
        "Clarify",
        __base__=ClarifyDraft,
        questions=(
            list[str],
            Field(
                default_factory=list,
                min_length=1 if at_least_one else 0,
                max_length=MAX_CLARIFYING_QUESTIONS,
                description="short questions for the person"
                + ("" if at_least_one else "; none when the question is clear"),
            ),
        ),
    )


# ---------------------------------------------------------------------------------------------------
# A research step's finding, as the researcher writes it.


class DraftClaim(Tolerant):
    text: str = Field(max_length=MAX_CLAIM_CHARS, description="one factual statement")
    sources: list[str] = Field(description="ids of the sources that support the claim")

    @field_validator("text")
    @classmethod
    def _text_shape(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("a claim's text is empty")
        return value


class FindingDraft(Tolerant):
    summary: str = Field(
        max_length=MAX_SUMMARY_CHARS, description="the finding in a few sentences of markdown"
    )
    claims: list[DraftClaim] = Field(default_factory=list, max_length=MAX_CLAIMS)

    @field_validator("summary")
    @classmethod
    def _summary_shape(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the summary is empty")
        return value


@functools.lru_cache(maxsize=256)
def finding_model(source_ids: tuple[str, ...]) -> type[FindingDraft]:
    """A finding whose claims cite only `source_ids` (the sources the step saw); with none, a claim
    cites nothing."""
    cite: Any = Literal[tuple(source_ids)] if source_ids else str  # type: ignore[valid-type]
    sources = Field(
        description="ids of the sources that support the claim",
        max_length=None if source_ids else 0,  # with no source to cite, a claim cites nothing
    )
    claim = create_model("Claim", __base__=DraftClaim, sources=(list[cite], sources))  # type: ignore[valid-type]
    return create_model(
        "Finding",
        __base__=FindingDraft,
        claims=(list[claim], Field(default_factory=list, max_length=MAX_CLAIMS)),  # type: ignore[valid-type]
    )


# ---------------------------------------------------------------------------------------------------
# Contradictions between an earlier run's claims and this run's, as the fact checker judges them.

MAX_CONTRADICTION_WHY_CHARS = 400


class DraftContradiction(Tolerant):
    earlier: str = Field(description="the id of the earlier claim (E1, E2, ...)")
    now: str = Field(description="the id of this run's claim that contradicts it (N1, N2, ...)")
    why: str = Field(
        max_length=MAX_CONTRADICTION_WHY_CHARS,
        description="one sentence: what each says that the other denies",
    )

    @field_validator("why")
    @classmethod
    def _why_shape(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the reason is empty")
        return value


class ContradictionsDraft(Tolerant):
    contradictions: list[DraftContradiction] = Field(
        default_factory=list, description="each pair of claims that cannot both be true; none when none"
    )


@functools.lru_cache(maxsize=64)
def contradictions_model(earlier: int, now: int) -> type[ContradictionsDraft]:
    """Pairs naming only the `earlier` claims E1..En and the `now` claims N1..Nm shown to the checker
    (ids as enums, so the provider keeps to them), at most one pair per claim of this run."""
    earlier_id: Any = Literal[tuple(f"E{i}" for i in range(1, earlier + 1))]  # type: ignore[valid-type]
    now_id: Any = Literal[tuple(f"N{i}" for i in range(1, now + 1))]  # type: ignore[valid-type]
    pair = create_model(
        "Contradiction",
        __base__=DraftContradiction,
        earlier=(earlier_id, Field(description="an earlier claim's id")),
        now=(now_id, Field(description="this run's claim's id")),
    )
    return create_model(
        "Contradictions",
        __base__=ContradictionsDraft,
        contradictions=(list[pair], Field(default_factory=list, max_length=now)),  # type: ignore[valid-type]
    )

"""Spans and counters for the work activities do: LLM calls, searches, page fetches, sandbox runs.

Why this exists: the SDK's interceptor gives every activity a `RunActivity:<type>` span, but not what
the activity did: which model answered, how many tokens it cost, what a search asked. One small helper
here gives every activity (those that exist and those to come) the same span shapes and metric names.

Spans follow the OpenTelemetry GenAI semantic conventions where they apply (`gen_ai.*`); Cairn's own
attributes are under `cairn.*`. Counters go through the SDK's metric meter, so they appear on the
worker's Prometheus endpoint beside the SDK's metrics (and are no-ops when metrics are off).

Activities run once per attempt and never on replay, so a span or count here is always a real call.
Must never: put a key, a prompt or a model's answer in a span or a metric (a search query and a URL
are fine: they are what a person wants to see), or fail an activity because telemetry failed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue
from temporalio import activity

from common.names import (
    METRIC_LLM_CALLS,
    METRIC_LLM_COST,
    METRIC_LLM_INPUT_TOKENS,
    METRIC_LLM_OUTPUT_TOKENS,
    METRIC_PAGE_FETCHES,
    METRIC_SANDBOX_RUNS,
    METRIC_SEARCHES,
)
from common.sandbox_models import ExecResult

# Span attributes (GenAI semantic conventions, then Cairn's own).
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ERROR_TYPE = "error.type"
# USD from CAIRN_MODEL_PRICES; 0 when the model has no configured price.
COST_USD = "cairn.cost_usd"
ROLE = "cairn.role"
PURPOSE = "cairn.purpose"  # The activity's summary, e.g. "plan v2"; never the prompt.
STRUCTURED_OUTPUT = "cairn.structured_output"  # How JSON was asked for: json_schema, json_object, prompt.


def count(name: str, value: int = 1, **attributes: str) -> None:
    """Add to one of Cairn's counters (names in common/names.py). Outside an activity, nothing."""
    if value and activity.in_activity():
        activity.metric_meter().create_counter(name).add(value, attributes)


def observe(name: str, value: float, **attributes: str) -> None:
    """Record a float amount (a call's cost) in a histogram; its `_sum` is the running total."""
    if activity.in_activity():
        activity.metric_meter().create_histogram_float(name).record(value, attributes)


class Telemetry:
    """The worker's tracer (None when tracing is off, then every span is a no-op)."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self.tracer = tracer

    @contextmanager
    def span(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Iterator[Span]:
        """A child of the current span (the activity's); an exception marks it failed and propagates."""
        if self.tracer is None:
            yield trace.INVALID_SPAN
            return
        with self.tracer.start_as_current_span(name, kind=kind, attributes=attributes) as span:
            yield span

    # -- LLM calls ----------------------------------------------------------------------------

    @contextmanager
    def llm_call(self, model: str, role: str, purpose: str, server: str | None) -> Iterator[Span]:
        """A GenAI `chat <model>` client span; finish it with `llm_done` or `llm_failed`."""
        attributes: dict[str, AttributeValue] = {
            GEN_AI_OPERATION: "chat",
            GEN_AI_PROVIDER: "openai",  # The API spoken; the server may be any compatible one.
            GEN_AI_REQUEST_MODEL: model,
            ROLE: role,
            PURPOSE: purpose[:200],
        }
        if server:
            parts = urlsplit(server)
            if parts.hostname:
                attributes["server.address"] = parts.hostname
            if parts.port:
                attributes["server.port"] = parts.port
        with self.span(f"chat {model}", attributes, SpanKind.CLIENT) as span:
            yield span

    @staticmethod
    def llm_done(
        span: Span,
        *,
        model: str,
        role: str,
        response_model: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float,
    ) -> None:
        span.set_attributes(
            {
                GEN_AI_RESPONSE_MODEL: response_model,
                GEN_AI_INPUT_TOKENS: input_tokens,
                GEN_AI_OUTPUT_TOKENS: output_tokens,
                COST_USD: cost_usd,
            }
        )
        count(METRIC_LLM_CALLS, model=model, role=role, outcome="ok")
        count(METRIC_LLM_INPUT_TOKENS, input_tokens, model=model, role=role)
        count(METRIC_LLM_OUTPUT_TOKENS, output_tokens, model=model, role=role)
        observe(METRIC_LLM_COST, cost_usd, model=model, role=role)

    @staticmethod
    def llm_failed(span: Span, *, model: str, role: str, error_type: str) -> None:
        span.set_attribute(ERROR_TYPE, error_type)
        count(METRIC_LLM_CALLS, model=model, role=role, outcome=error_type)

    # -- searches and page fetches (for the search activities) --------------------------------

    @contextmanager
    def search(self, query: str, provider: str) -> Iterator[Span]:
        """Wrap one web search; counts it as ok, or as the exception's type when it raises."""
        outcome = "ok"
        try:
            with self.span(
                f"search {provider}", {"cairn.search.query": query[:500], "cairn.search.provider": provider}
            ) as span:
                yield span
        except BaseException as err:
            outcome = _outcome(err)
            raise
        finally:
            count(METRIC_SEARCHES, provider=provider, outcome=outcome)

    @contextmanager
    def fetch(self, url: str) -> Iterator[Span]:
        """Wrap one page fetch; counts it as ok, or as the exception's type when it raises."""
        outcome = "ok"
        try:
            with self.span("fetch", {"url.full": url[:2000]}, SpanKind.CLIENT) as span:
                yield span
        except BaseException as err:
            outcome = _outcome(err)
            raise
        finally:
            count(METRIC_PAGE_FETCHES, outcome=outcome)

    # -- sandbox runs ----------------------------------------------------------------------------

    @contextmanager
    def sandbox_run(self, step: str) -> Iterator[Span]:
        with self.span("sandbox run", {"cairn.step": step}) as span:
            yield span

    @staticmethod
    def sandbox_done(span: Span, result: ExecResult) -> None:
        outcome = sandbox_outcome(result)
        span.set_attributes(
            {
                "cairn.sandbox.outcome": outcome,
                "cairn.sandbox.exit_code": result.exit_code,
                "cairn.sandbox.duration_ms": result.duration_ms,
                "cairn.sandbox.warm": result.warm,
                "cairn.sandbox.artifacts": len(result.artifacts),
            }
        )
        count(METRIC_SANDBOX_RUNS, outcome=outcome)

    @staticmethod
    def sandbox_failed(span: Span, error_type: str) -> None:
        span.set_attribute(ERROR_TYPE, error_type)
        count(METRIC_SANDBOX_RUNS, outcome="error")


def _outcome(err: BaseException) -> str:
    """An ApplicationError's stable type ("FetchTimeout"), else the exception's class name."""
    return getattr(err, "type", None) or type(err).__name__


def sandbox_outcome(result: ExecResult) -> str:
    """ok, failed (non-zero exit), timeout, oom, pids_limit or signal: one word a dashboard groups by."""
    if result.timed_out:
        return "timeout"
    if result.oom_killed:
        return "oom"
    if result.pids_limit_hit:
        return "pids_limit"
    if result.signal:
        return "signal"
    return "ok" if result.exit_code == 0 else "failed"

"""Tracing setup: OpenTelemetry through the Temporal SDK's own interceptor, configured only by `OTEL_*`.

Why this exists: a research run spans a client, a workflow, child workflows and many activities, often
on different processes. The SDK's `TracingInterceptor` carries the trace context through Temporal
headers, so one run is one trace; this module decides, once per process, whether tracing is on and
builds the provider and the interceptor.

It reads only the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_EXPORTER`, `OTEL_SDK_DISABLED`); the
exporter itself reads the rest (`OTEL_EXPORTER_OTLP_HEADERS`, certificates, timeouts). When none of them
is set there is no provider and no interceptor: tracing costs nothing.

Must never: export synchronously (spans go through a BatchSpanProcessor, so a slow or absent collector
never blocks a run), or be imported by workflow code (workflows stay free of environment reads).
The tracer reaches whoever needs it (the worker's activities) as an argument, never through a client.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import temporalio.workflow
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Tracer
from temporalio.contrib.opentelemetry import TracingInterceptor, TracingWorkflowInboundInterceptor
from temporalio.worker import WorkflowInterceptorClassInput

from common.config import ConfigError
from common.version import __version__

# Any of these set (to anything but an explicit "off") turns tracing on.
TRIGGERS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
)
DEFAULT_SERVICE_NAME = "cairn"
TRACER_NAME = "cairn"


def enabled(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name) for name in TRIGGERS)


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"  # The OpenTelemetry specification's default.
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

        if endpoint is None and base:
            endpoint = base.rstrip("/") + "/v1/traces"  # The signal path goes on the base endpoint.
        return HTTPExporter(endpoint=endpoint or "http://localhost:4318/v1/traces")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

        return GRPCExporter(endpoint=endpoint or base or "http://localhost:4317")
    raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf or grpc")


def _exporter(env: Mapping[str, str]) -> SpanExporter:
    kind = (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
    if kind == "otlp":
        return _otlp_exporter(env)
    if kind == "console":
        return ConsoleSpanExporter()
    raise ConfigError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported: use otlp, console or none")


class _RunRootedWorkflowInterceptor(TracingWorkflowInboundInterceptor):
    """A run started with no trace of its own (the plain `temporal` CLI, a schedule) gets one, so every
    run is one trace with its steps, activities and LLM calls however it was started. Its trace and
    parent span ids come from the run's workflow id and first run id: the same on every replay and
    across continue-as-new, as workflow code must be. The parent itself is never exported, so the
    run's spans hang from one missing root in the trace."""

    def _load_workflow_context_carrier(self) -> dict[str, Any] | None:
        carrier: dict[str, Any] | None = super()._load_workflow_context_carrier()
        if carrier is None:
            info = temporalio.workflow.info()
            seed = f"{info.workflow_id}/{info.first_execution_run_id}".encode()
            digest = hashlib.sha256(seed).hexdigest()
            carrier = {"traceparent": f"00-{digest[:32]}-{digest[32:48]}-01"}
            self._workflow_context_carrier = carrier
        return carrier


class RunTracingInterceptor(TracingInterceptor):
    """The SDK's tracing interceptor, giving runs started without a trace one of their own."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[TracingWorkflowInboundInterceptor]:
        super().workflow_interceptor_class(input)  # registers the SDK's extern functions
        return _RunRootedWorkflowInterceptor


@dataclass
class Tracing:
    """A tracer provider with batch export, its tracer (for the spans activities make themselves) and
    the Temporal interceptor that uses it (for the workflow and activity spans)."""

    provider: TracerProvider
    tracer: Tracer = field(init=False)
    interceptor: TracingInterceptor = field(init=False)

    def __post_init__(self) -> None:
        self.tracer = self.provider.get_tracer(TRACER_NAME, __version__)
        self.interceptor = RunTracingInterceptor(self.tracer)

    def flush(self, timeout_seconds: float = 10) -> None:
        self.provider.force_flush(int(timeout_seconds * 1000))

    def shutdown(self) -> None:
        self.provider.shutdown()  # Exports what is still queued, then stops the export thread.


def tracing_from_env(env: Mapping[str, str], service: str = DEFAULT_SERVICE_NAME) -> Tracing | None:
    """Tracing as the `OTEL_*` variables in `env` describe it, or None when they leave it off."""
    if not enabled(env):
        return None
    resource = Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME") or service, "service.version": __version__}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_exporter(env)))
    return Tracing(provider)


_process: Tracing | None = None
_configured = False


def process_tracing() -> Tracing | None:
    """This process's tracing from os.environ, set up on first use and then shared by every client.
    It also becomes the global provider, so any library's own spans join the same traces."""
    global _process, _configured
    if not _configured:
        _configured = True
        _process = tracing_from_env(os.environ)
        if _process is not None:
            trace.set_tracer_provider(_process.provider)
    return _process


def shutdown_process_tracing() -> None:
    """Export the spans still queued; call before the process exits."""
    if _process is not None:
        _process.shutdown()

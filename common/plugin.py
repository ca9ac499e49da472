"""Cairn's Temporal plugin: what every client, worker and replayer must agree on, assembled once.

- The data converter: pydantic payloads, one rule for a payload that cannot be decoded (a non-retryable
  error saying why), and large payloads in the payload store (common/payload_store.py). A worker and a
  client that disagree on it cannot read each other's payloads.
- Tracing: the SDK's interceptor (common/tracing.py), when `OTEL_*` configures it, so the client that
  starts a run and the workers that run it make one trace.
- The workflow sandbox: which modules workflows share with the worker process instead of re-importing
  them for every run.

The plugin goes on the client (`connect`); workers built on that client inherit it, and the replayer
takes it directly (client/replay.py), as the SDK's own integrations do. Must never: hold a key, or
differ between a worker and the clients that talk to it.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from typing import Any

from pydantic import TypeAdapter
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.common import RawValue
from temporalio.contrib.pydantic import (
    PydanticJSONPlainPayloadConverter,
    PydanticPayloadConverter,
    pydantic_data_converter,
)
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.plugin import SimplePlugin
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from common import errors
from common.config import TemporalConfig
from common.payload_store import UNRESOLVED_ENCODING, external_storage
from common.tracing import Tracing, process_tracing

PLUGIN_NAME = "cairn"

# The workflow sandbox re-imports a workflow's modules for every run; these are imported once and
# shared instead. Only deterministic modules with no state of a run belong here, each with its reason.
PASSED_THROUGH = (
    # Payload models are pydantic; re-importing pydantic per run is slow and it keeps no run state.
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    # Cairn's own data types, names and error types: plain definitions, no I/O at import.
    "common.errors",
    "common.events",
    "common.models",
    "common.names",
    "common.retention_models",
    "common.sandbox_models",
    "common.structured",
    "common.tenancy",
    # Pure helpers of the workflows (input checks, plan books, budgets, activity calls, prompts, report
    # framing, UI details): no module state, no I/O, so one import serves every run.
    "workflows.budget",
    "workflows.calls",
    "workflows.details",
    "workflows.event_log",
    "workflows.inputs",
    "workflows.living",
    "workflows.plan_book",
    "workflows.prompts",
    "workflows.reporting",
    # The researcher graph's layout, routers and working memory: pure too. The graph object itself is
    # built on the worker, shared with every run by the LangGraph plugin (which passes through langchain
    # and langgraph) and compiled once (graph.compiled keeps the result on it).
    "workflows.researcher.graph",
    "workflows.researcher.memory",
)


# pydantic TypeAdapters, one per payload type, for the whole process. The SDK makes a new payload
# converter for every serialization context (each activity task, each workflow run), each with an empty
# cache of its own, so each would build its types' adapters again. An adapter depends only on its type,
# so sharing them is safe; lru_cache is thread-safe.
TYPE_ADAPTERS = functools.lru_cache(maxsize=1024)(TypeAdapter)
# Guards the one-time builds of converters below (workflow activations run on several threads).
_BUILT_LOCK = threading.RLock()


class PayloadConverter(PydanticPayloadConverter):
    """The SDK's pydantic payload converter, with the process-wide TypeAdapter cache, and one rule for
    a payload that cannot be decoded (an unknown encoding, a reference the payload store could not
    follow, bytes that do not fit the type): a non-retryable ApplicationError saying why. Decoding it
    again can never succeed, so a workflow's input fails the run at once, an activity's input fails
    the activity without retries, and a signal's is dropped (the SDK logs it) instead of failing
    every later workflow task."""

    # The SDK builds a payload converter from this class for every workflow activation (its
    # command-aware data converter is a new DataConverter each time). It keeps no state but the
    # process-wide TYPE_ADAPTERS, so every build returns the one instance, made once.
    _shared: PayloadConverter | None = None
    _ready = False

    def __new__(cls) -> PayloadConverter:
        if cls._shared is None or type(cls._shared) is not cls:
            with _BUILT_LOCK:
                if cls._shared is None or type(cls._shared) is not cls:
                    cls._shared = super().__new__(cls)
        return cls._shared

    def __init__(self) -> None:
        if self._ready:
            return
        with _BUILT_LOCK:
            if self._ready:
                return
            super().__init__()
            for converter in self.converters.values():
                if isinstance(converter, PydanticJSONPlainPayloadConverter):
                    converter._type_adapter = TYPE_ADAPTERS
            self._ready = True

    def from_payloads(self, payloads: Sequence[Payload], type_hints: list[type] | None = None) -> list[Any]:
        for payload, hint in zip_longest(payloads, type_hints or []):
            if hint is not RawValue and payload.metadata.get("encoding") == UNRESOLVED_ENCODING:
                raise ApplicationError(
                    f"a payload is unavailable: {payload.data.decode(errors='replace')}",
                    type=errors.PAYLOAD_UNAVAILABLE,
                    non_retryable=True,
                )
        try:
            return super().from_payloads(payloads, type_hints)
        except ApplicationError:
            raise
        except Exception as err:
            cause = err.__cause__ or err
            raise ApplicationError(
                f"a payload cannot be decoded: {type(cause).__name__}: {str(cause)[:1000]}",
                type=errors.PAYLOAD_UNDECODABLE,
                non_retryable=True,
            ) from err


# The converters a DataConverter builds in __post_init__, by (payload class, failure class).
_BUILT: dict[tuple[type, type], tuple[Any, Any]] = {}


@dataclasses.dataclass(frozen=True)
class CairnDataConverter(DataConverter):
    """The SDK's DataConverter, building its payload and failure converters once per process.

    With external storage on, the SDK copies the data converter (dataclasses.replace) to bind a store
    context to the payloads it visits, hundreds of times in a run, and each copy would build a fresh
    composite payload converter and failure converter. Both are stateless (their only cache,
    TYPE_ADAPTERS, is process-wide), so every copy shares one pair; a converter that takes a
    serialization context still gets its own through `with_context`."""

    def __post_init__(self) -> None:
        key = (self.payload_converter_class, self.failure_converter_class)
        built = _BUILT.get(key)
        if built is None:
            with _BUILT_LOCK:
                built = _BUILT.get(key)
                if built is None:
                    super().__post_init__()
                    built = _BUILT[key] = (self.payload_converter, self.failure_converter)
        object.__setattr__(self, "payload_converter", built[0])
        object.__setattr__(self, "failure_converter", built[1])


def data_converter(env: Mapping[str, str] | None = None, *, offload: bool = True) -> DataConverter:
    """Pydantic payloads, with large ones in Cairn's payload store (common/payload_store.py)."""
    return CairnDataConverter(
        payload_converter_class=PayloadConverter,
        payload_codec=pydantic_data_converter.payload_codec,
        failure_converter_class=pydantic_data_converter.failure_converter_class,
        external_storage=external_storage(env, offload=offload),
    )


def workflow_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSED_THROUGH)
    )


class CairnPlugin(SimplePlugin):
    """The converter, tracing and sandbox configuration of a Cairn client, worker or replayer.
    `offload=False` is for clients: they read large payloads from the store but never write there
    (see common/payload_store.py). `tracing` is this process's (`OTEL_*`), or None for none."""

    def __init__(
        self, *, env: Mapping[str, str] | None = None, offload: bool = True, tracing: Tracing | None = None
    ) -> None:
        self.tracing = tracing
        super().__init__(
            PLUGIN_NAME,
            data_converter=data_converter(env, offload=offload),
            interceptors=[tracing.interceptor] if tracing is not None else None,
            workflow_runner=workflow_runner(),
        )


async def connect(
    config: TemporalConfig | None = None,
    *,
    offload: bool = True,
    env: Mapping[str, str] | None = None,
    tracing: Tracing | bool | None = True,
    **overrides: Any,
) -> Client:
    """A client carrying Cairn's plugin (workers built on it inherit it). `tracing=True` takes this
    process's tracing from `OTEL_*`; a Tracing or None chooses. `overrides` go to Client.connect."""
    config = config or TemporalConfig.from_env()
    chosen = process_tracing() if tracing is True else tracing or None
    plugin = CairnPlugin(env=env, offload=offload, tracing=chosen)
    return await Client.connect(**{**config.connect, "plugins": [plugin], **overrides})


def plugin_of(client: Client) -> CairnPlugin | None:
    """The Cairn plugin a client was connected with."""
    return next((p for p in client.config().get("plugins", []) if isinstance(p, CairnPlugin)), None)

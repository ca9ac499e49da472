"""One way to reach Temporal, shared by the worker, the Python API and the CLI.

Both sides must use the same data converter (pydantic), or payloads written by one are unreadable by
the other, and the same payload store (large payloads live outside history); that is why connecting
lives here and nowhere else. Tracing is attached here for the same
reason: the client that starts a run and the worker built on a client must carry the same interceptor,
or a run's spans split into several traces.
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

from client.payload_store import UNRESOLVED_ENCODING, external_storage
from common.config import TemporalConfig
from common.telemetry import process_tracing


async def connect(config: TemporalConfig | None = None, *, offload: bool = True, **overrides: Any) -> Client:
    """Connect with Cairn's converter. With `OTEL_*` tracing configured, the SDK's TracingInterceptor
    goes on the client, and workers built on it inherit it (never add it to a worker as well: every
    span would appear twice). `interceptors=` or `runtime=` in `overrides` replace the defaults.
    `offload=False` is for clients: they read large payloads from the store but never write there
    (see client/payload_store.py)."""
    config = config or TemporalConfig.from_env()
    options: dict[str, Any] = dict(config.connect)
    if "interceptors" not in overrides:
        tracing = process_tracing()
        if tracing is not None:
            options["interceptors"] = [tracing.interceptor]
    options.update(overrides)
    options.setdefault("data_converter", data_converter(offload=offload))
    return await Client.connect(**options)


# pydantic TypeAdapters, one per payload type, for the whole process. The SDK makes a new payload
# converter for every serialization context (each activity task, each workflow run), and each
# converter's own cache starts empty: every activity paid 1-2 ms to build its input's TypeAdapter again.
# An adapter depends only on its type, so sharing them is safe; lru_cache is thread-safe.
TYPE_ADAPTERS = functools.lru_cache(maxsize=1024)(TypeAdapter)


ERR_PAYLOAD_UNAVAILABLE = "PayloadUnavailable"
ERR_PAYLOAD_UNDECODABLE = "PayloadUndecodable"


class PayloadConverter(PydanticPayloadConverter):
    """The SDK's pydantic payload converter, with the process-wide TypeAdapter cache, and one rule for
    a payload that cannot be decoded (an unknown encoding, a reference the payload store could not
    follow, bytes that do not fit the type): a non-retryable ApplicationError saying why. Decoding it
    again can never succeed, so a workflow's input fails the run at once, an activity's input fails
    the activity without retries, and a signal's is dropped (the SDK logs it) instead of failing
    every later workflow task."""

    def __init__(self) -> None:
        super().__init__()
        for converter in self.converters.values():
            if isinstance(converter, PydanticJSONPlainPayloadConverter):
                converter._type_adapter = TYPE_ADAPTERS

    def from_payloads(self, payloads: Sequence[Payload], type_hints: list[type] | None = None) -> list[Any]:
        for payload, hint in zip_longest(payloads, type_hints or []):
            if hint is not RawValue and payload.metadata.get("encoding") == UNRESOLVED_ENCODING:
                raise ApplicationError(
                    f"a payload is unavailable: {payload.data.decode(errors='replace')}",
                    type=ERR_PAYLOAD_UNAVAILABLE,
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
                type=ERR_PAYLOAD_UNDECODABLE,
                non_retryable=True,
            ) from err


# The converters a DataConverter builds in __post_init__, by (payload class, failure class).
_BUILT: dict[tuple[type, type], tuple[Any, Any]] = {}
_BUILT_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CairnDataConverter(DataConverter):
    """The SDK's DataConverter, building its payload and failure converters once per process.

    With external storage on, the SDK copies the data converter (dataclasses.replace) to bind a store
    context to the payloads it visits, ~235 times in a 10-step run, and every copy built a fresh
    composite payload converter and failure converter: 26 us a copy, 4 us now. Both are stateless
    (their only cache, TYPE_ADAPTERS, is process-wide), so every copy shares one pair; a converter
    that takes a serialization context still gets its own through `with_context`."""

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
    """Pydantic payloads, with large ones in Cairn's payload store (client/payload_store.py)."""
    return CairnDataConverter(
        payload_converter_class=PayloadConverter,
        payload_codec=pydantic_data_converter.payload_codec,
        failure_converter_class=pydantic_data_converter.failure_converter_class,
        external_storage=external_storage(env, offload=offload),
    )

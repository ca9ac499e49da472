"""One way to reach Temporal, shared by the worker, the Python API and the CLI.

Both sides must use the same data converter (pydantic), or payloads written by one are unreadable by
the other; that is why connecting lives here and nowhere else.
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from common.config import TemporalConfig


async def connect(config: TemporalConfig | None = None, **overrides: Any) -> Client:
    config = config or TemporalConfig.from_env()
    options: dict[str, Any] = dict(config.connect)
    options.update(overrides)
    return await Client.connect(data_converter=pydantic_data_converter, **options)

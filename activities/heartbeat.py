"""Heartbeating for activities that wait on something slow (a model, a container).

A heartbeat is how Temporal learns that a worker died mid-call, within the heartbeat timeout instead of
the start-to-close timeout, and it is the only way an async activity hears of its cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from temporalio import activity

T = TypeVar("T")


async def with_heartbeats(work: Awaitable[T], every: float = 1.0) -> T:
    """Await `work`, heartbeating every `every` seconds. Cancellation of the activity cancels `work`."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        if not task.done():
            task.cancel()

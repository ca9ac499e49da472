"""A warm pool of started, idle sandbox containers, so a run skips container creation and start-up.

Why this exists: creating and starting a container is slow next to a small program's run; a pooled
container has already paid that and its bootstrap is blocked reading stdin, so a run only attaches and
sends the program. Each container serves exactly one run and is then destroyed by the runner; the pool
refills in the background.

Must never: hand the same container out twice, block the event loop (Docker calls go through the
runner's thread pool), or keep a container past `pool_max_idle_seconds` (the reaper of another process
on another host judges our containers by age).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from activities.sandbox.engine import SandboxEngine

log = logging.getLogger(__name__)

BlockingRunner = Callable[..., Awaitable[Any]]


class WarmPool:
    def __init__(self, engine: SandboxEngine, size: int, max_idle: float, run: BlockingRunner) -> None:
        self._engine = engine
        self._size = size
        self._max_idle = max_idle
        self._run = run  # runs a blocking call in a thread and awaits it
        self._ready: deque[tuple[str, float]] = deque()
        self._refill_task: asyncio.Task[None] | None = None
        self._closed = False
        self.last_error: BaseException | None = None

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def ready_ids(self) -> set[str]:
        return {cid for cid, _ in self._ready}

    async def quiesce(self) -> None:
        """Wait for an in-flight refill, so every container the pool made is in `ready_ids()`."""
        if self._refill_task is not None:
            await asyncio.wait({self._refill_task})

    async def take(self) -> str | None:
        """A started idle container, or None if none is ready (the caller then starts one itself)."""
        now = time.monotonic()
        cid = None
        while self._ready:
            candidate, born = self._ready.popleft()
            if now - born <= self._max_idle:
                cid = candidate
                break
            await self._run(self._engine.remove, candidate)
        if not self._ready:
            # The next run would start cold: refill now. Otherwise the runner refills after this run,
            # so creating a container does not compete with the program for CPU.
            self.kick()
        return cid

    def kick(self) -> None:
        """Start refilling in the background unless a refill is already running."""
        if self._closed or self._size <= 0:
            return
        if self._refill_task is None or self._refill_task.done():
            self._refill_task = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        # One container at a time: creation is CPU-heavy and competes with programs that are running.
        while not self._closed and len(self._ready) < self._size:
            try:
                cid = await self._run(self._engine.create_started, {"cairn.pool": "warm"})
            except Exception as err:
                self.last_error = err
                log.warning("sandbox pool refill failed: %s", err)
                return
            if self._closed:
                await self._run(self._engine.remove, cid)
                return
            self._ready.append((cid, time.monotonic()))
            self.last_error = None

    async def wait_full(self, within: float = 60.0) -> None:
        """For benchmarks and tests: wait until the pool holds `size` ready containers."""
        deadline = time.monotonic() + within
        while len(self._ready) < self._size:
            self.kick()
            if self._refill_task is not None:
                await asyncio.wait({self._refill_task}, timeout=max(0.0, deadline - time.monotonic()))
            if self.last_error is not None:
                raise self.last_error
            if time.monotonic() >= deadline:
                raise TimeoutError("sandbox pool did not fill")

    async def recycle_stale(self) -> None:
        now = time.monotonic()
        fresh = deque(item for item in self._ready if now - item[1] <= self._max_idle)
        stale = [cid for cid, born in self._ready if now - born > self._max_idle]
        self._ready = fresh
        for cid in stale:
            await self._run(self._engine.remove, cid)
        self.kick()

    async def close(self) -> None:
        self._closed = True
        if self._refill_task is not None:
            # Let an in-flight create finish so its container is removed rather than leaked.
            await asyncio.wait({self._refill_task})
        while self._ready:
            cid, _ = self._ready.popleft()
            await self._run(self._engine.remove, cid)

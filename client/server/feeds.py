"""Runs' event streams, read once per run per API process and fanned out to every subscriber.

The events live in each run's workflow stream (common/events.py; workflows/event_log.py publishes them);
a feed subscribes to it with the SDK's WorkflowStreamClient (a long-poll update while the run is open, a
query once it has closed, following continue-as-new) and keeps what it read, so two hundred browsers
watching one run cost one poll. What a feed keeps is a copy of durable state, read from offset 0: a
process that dies loses nothing, and the next one reads the same events with the same offsets.

SSE ids are offsets + 1, so a client's Last-Event-ID n means "I have everything up to offset n - 1".

A feed nobody has read for IDLE_SECONDS stops polling and is dropped. A poll that fails (Temporal
restarting, no worker to answer a closed run's query) is retried with backoff while anyone reads; a
run that does not exist ends its feed with `missing`.

Must never: invent, reorder or drop an event (the stream's offsets are the order), or keep polling a
run nobody watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import RawValue
from temporalio.contrib.workflow_streams import WorkflowStreamClient
from temporalio.service import RPCError, RPCStatusCode

from common.events import EVENTS_TOPIC, TERMINAL_EVENTS, RunEvent

log = logging.getLogger("cairn.api.feeds")

IDLE_SECONDS = 60.0
MAX_FEEDS = 5000
# Between two polls of a caught-up run. Each poll that returns items is an update in the run's
# history; this bounds how many a burst of events can cost, at a small price in latency.
POLL_COOLDOWN = timedelta(milliseconds=50)
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Event:
    offset: int
    type: str
    data: str  # the event as JSON, without empty fields

    @property
    def sse_id(self) -> int:
        return self.offset + 1


class Feed:
    def __init__(self, temporal: Client, run_id: str) -> None:
        self.run_id = run_id
        self.events: list[Event] = []
        self.ended = False  # the terminal event was read, or the closed run's stream is drained
        self.missing = False
        self.readers = 0
        self.last_read = time.monotonic()
        self._changed = asyncio.Condition()
        self._temporal = temporal
        self._task = asyncio.create_task(self._pump(), name=f"feed {run_id}")

    async def _pump(self) -> None:
        failures = 0
        while not self.ended:
            try:
                await self._read_from(self.events[-1].offset + 1 if self.events else 0)
                failures = 0
            except asyncio.CancelledError:
                raise
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND and not self.events:
                    self.missing = self.ended = True
                    break
                failures += 1
                log.warning("feed of %s: %s; retrying", self.run_id, " ".join(err.message.split())[:200])
            except Exception as err:  # A poll's failure must not end the feed while people watch.
                failures += 1
                log.warning("feed of %s: %s; retrying", self.run_id, str(err)[:200])
            if not self.ended:
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
        await self._notify()

    async def _read_from(self, offset: int) -> None:
        stream = WorkflowStreamClient.create(self._temporal, self.run_id)
        async for item in stream.subscribe(
            [EVENTS_TOPIC], from_offset=offset, result_type=RawValue, poll_cooldown=POLL_COOLDOWN
        ):
            if self.events and item.offset <= self.events[-1].offset:
                continue  # Read before a retry; offsets never change.
            event = RunEvent.model_validate_json(item.data.payload.data)
            self.events.append(Event(item.offset, event.type, event.model_dump_json(exclude_none=True)))
            if event.type in TERMINAL_EVENTS:
                self.ended = True  # Nothing follows a run's last event.
                await self._notify()
                return
            await self._notify()
        self.ended = True  # The run closed and its stream is drained.

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def read(self, after: int) -> AsyncIterator[Event]:
        """The events with sse_id > `after`, as they come, until the run's last one."""
        self.readers += 1
        try:
            position = 0  # the index in `events` of the next event to look at
            while True:
                while position < len(self.events):
                    event = self.events[position]
                    position += 1
                    if event.sse_id > after:
                        yield event
                if self.ended and position >= len(self.events):
                    return
                async with self._changed:
                    await self._changed.wait_for(functools.partial(self._beyond, position))
        finally:
            self.readers -= 1
            self.last_read = time.monotonic()

    def _beyond(self, position: int) -> bool:
        return position < len(self.events) or self.ended

    def idle(self) -> bool:
        return self.readers == 0 and time.monotonic() - self.last_read > IDLE_SECONDS

    def stop(self) -> None:
        self._task.cancel()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class Feeds:
    def __init__(self, temporal: Client) -> None:
        self._temporal = temporal
        self._feeds: dict[str, Feed] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def feed(self, run_id: str) -> Feed:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        found = self._feeds.get(run_id)
        if found is None or (found.missing and found.readers == 0):
            if found is not None:
                found.stop()
            found = self._feeds[run_id] = Feed(self._temporal, run_id)
            if len(self._feeds) > MAX_FEEDS:
                self._drop_idlest()
        found.last_read = time.monotonic()
        return found

    def _drop_idlest(self) -> None:
        unread = [f for f in self._feeds.values() if f.readers == 0]
        if unread:
            oldest = min(unread, key=lambda f: f.last_read)
            del self._feeds[oldest.run_id]
            oldest.stop()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SECONDS / 4)
            for run_id, feed in list(self._feeds.items()):
                if feed.idle():
                    del self._feeds[run_id]
                    await feed.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for feed in list(self._feeds.values()):
            await feed.close()
        self._feeds.clear()

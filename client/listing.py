"""Runs newest first (by start time), a page at a time, from Temporal's visibility store.

Why this exists: Temporal's SQL visibility (the dev server's SQLite, and PostgreSQL or MySQL in
production) lists running executions first and closed ones by close time, and refuses ORDER BY; a
person's list of runs reads newest first. So a page is read back in time from its cursor: when what
is left is small (a count says so) it is read whole and sorted here; otherwise by windows of start
time, each read whole and sorted, widening until the page is full. A window too full to read is
narrowed. A first page of a tenant with up to ALL_AT_ONCE runs costs one count and one listing.

Must never: put anything in a query but the caller's server-built base query and times formatted
here, or skip or repeat a run between pages: the order is (start time, id) descending, and a cursor
is the last run's start time and id, so a run started at the same instant as the cursor's is placed
by its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from temporalio.client import Client, WorkflowExecution

# Left to read at most this many runs: read them in one listing and sort them here.
ALL_AT_ONCE: Final = 200
# A window is read whole; one holding more than this is narrowed rather than read.
MAX_WINDOW_ROWS: Final = 1000
FIRST_WINDOW: Final = timedelta(days=1)
WIDEN: Final = 8
NARROWEST: Final = timedelta(seconds=1)
_TICK: Final = timedelta(microseconds=1)


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last run's start time (to the microsecond) and id."""

    start: datetime
    id: str


def _key(execution: WorkflowExecution) -> tuple[datetime, str]:
    start = execution.start_time or datetime.min.replace(tzinfo=UTC)
    return start, execution.id


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _read(client: Client, query: str, cap: int | None) -> list[WorkflowExecution] | None:
    """Every execution `query` matches, or None when there are more than `cap`."""
    found: list[WorkflowExecution] = []
    async for execution in client.list_workflows(query, page_size=MAX_WINDOW_ROWS):
        found.append(execution)
        if cap is not None and len(found) > cap:
            return None
    return found


async def newest_first(
    client: Client, query: str, limit: int, after: Position | None
) -> tuple[list[WorkflowExecution], Position | None]:
    """Up to `limit` runs of `query` older than `after` (all when None), newest first, and the
    position to read the next page from (None when nothing older is left)."""
    # Microseconds are what a datetime holds; the server keeps nanoseconds, so a bound one tick past
    # the cursor takes in every run that truncates to its instant, and the key comparison sorts them.
    upper = after.start + _TICK if after else None
    cursor = (after.start, after.id) if after else None

    def bounded(lower: datetime | None, upper: datetime | None) -> str:
        clauses = [f"({query})"]
        if lower is not None:
            clauses.append(f"StartTime >= '{_at(lower)}'")
        if upper is not None:
            clauses.append(f"StartTime < '{_at(upper)}'")
        return " AND ".join(clauses)

    collected: list[WorkflowExecution] = []
    window = FIRST_WINDOW
    newest = datetime.now(UTC)
    while len(collected) <= limit:
        left = (await client.count_workflows(bounded(None, upper))).count
        if left == 0:
            break
        if left <= ALL_AT_ONCE:
            rows = await _read(client, bounded(None, upper), None) or []
            collected += sorted((r for r in rows if not cursor or _key(r) < cursor), key=_key, reverse=True)
            break
        # The first window has no upper bound, so a run stamped by a server clock ahead of ours is in it.
        top = upper or newest
        lower = top - window
        rows_or_none = await _read(client, bounded(lower, upper), MAX_WINDOW_ROWS)
        while rows_or_none is None and window > NARROWEST:
            window /= WIDEN
            lower = top - window
            rows_or_none = await _read(client, bounded(lower, upper), MAX_WINDOW_ROWS)
        rows = (
            rows_or_none
            if rows_or_none is not None
            else await _read(client, bounded(lower, upper), None) or []
        )
        collected += sorted((r for r in rows if not cursor or _key(r) < cursor), key=_key, reverse=True)
        upper, window = lower, window * WIDEN
    page = collected[:limit]
    if len(collected) <= limit or not page:
        return page, None
    last = _key(page[-1])
    return page, Position(start=last[0], id=last[1])

"""Each tenant's limits, applied when a run starts or its budget is raised.

One implementation for both places a run is admitted: the API, before it starts a run (a refusal is
its 429 answer), and the worker's `runs.admit` activity, when a run that Temporal's scheduler started
begins (activities/admission.py; a refusal fails the run with QuotaExceeded). Both read the same
tenants file and the same ledger database, so a tenant's day is one day whichever way its runs start.

- **Concurrent runs**: counted from Temporal's visibility (the tenant's running research runs, less
  the run being admitted when it is already running, as a scheduled run is) plus the runs this process
  admitted in the last few seconds, which visibility may not show yet. Past the limit, `POST /v1/runs`
  answers 429 with Retry-After. Admissions of one tenant take turns in a process, so two cannot both
  take the last slot; across processes (API replicas, workers) the count can overshoot by the starts
  that race within visibility's delay (a second or two), which docs/operations.md states.
- **Tokens and dollars per UTC day**: every run of a tenant with such a limit starts with a budget
  (common/models.py `token_budget`, `cost_budget_usd`; the run pauses at it, exact through crashes)
  no larger than what the day has left and, with a concurrency limit, than an equal share of the day
  per concurrent run. The budget is reserved in the ledger (table `cairn_usage`) when the run starts,
  and replaced by what the run really spent once it has ended (read from its status), so what a
  finished run did not use goes back to the day. A run counts for the day it started.

Must never: start a run without a budget when its tenant has a daily limit, let a budget raise take
more than the day has left, or depend on the HTTP layer (a refusal is a QuotaRefused, which each caller
turns into its own kind of answer).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from client.api import QUERY_TIMEOUT
from client.server.db import Database
from client.server.policy import Policies, TenantPolicy
from client.server.tenants import runs_query
from common.models import RaiseBudget, RunStatus
from common.names import QUERY_STATUS

# A run started this recently may not be in visibility yet; it counts as running meanwhile.
VISIBILITY_GRACE_SECONDS = 5.0
# When a tenant is at its concurrency limit, ask the caller to come back after this.
CONCURRENCY_RETRY_SECONDS = 5

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cairn_usage (
        run_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, day TEXT NOT NULL,
        reserved_tokens BIGINT NOT NULL, reserved_usd DOUBLE PRECISION NOT NULL,
        used_tokens BIGINT, used_usd DOUBLE PRECISION, settled INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS cairn_usage_tenant_day ON cairn_usage (tenant, day)",
)


@dataclass(frozen=True)
class Admission:
    """What a run may spend: the budgets it asks for, or starts with (None: no such limit)."""

    token_budget: int | None
    cost_budget_usd: float | None


class QuotaRefused(Exception):
    """A limit of the tenant's stops a run or a raise. `detail` is for a person: which limit, and what to
    do; `code` is stable (concurrent_runs, daily_quota); `retry_after` is when, in seconds, to try again."""

    def __init__(self, detail: str, code: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.retry_after = retry_after


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return max(int((midnight - now).total_seconds()) + 1, 1)


def _smaller(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


class Quotas:
    def __init__(self, temporal: Client, db: Database, policies: Policies) -> None:
        self._temporal = temporal
        self._db = db
        self._policies = policies
        self._turns: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._recent: dict[str, tuple[str, float]] = {}  # run id -> (tenant, when started)

    def turn(self, tenant: str) -> asyncio.Lock:
        """Held across a tenant's admission and start, so two starts cannot take one slot."""
        return self._turns[tenant]

    async def ready(self) -> None:
        await self._db.ensure_schema("cairn_usage", SCHEMA)

    # -- starting a run ---------------------------------------------------------------------------

    async def admit(self, tenant: str, asked: Admission, *, exclude: str | None = None) -> Admission:
        """The budgets a run asking for `asked` may run with, or QuotaRefused saying which limit stops it.
        `exclude` is the run being admitted when it is already running (a scheduled run): it does not
        count against its own admission. Call with `turn(tenant)` held, and `started` once the run is
        started (or, for a run already running, once it is admitted)."""
        policy = self._policies.of(tenant)
        running = await self._running(tenant, policy, exclude)
        if policy.concurrent_runs and running >= policy.concurrent_runs:
            raise QuotaRefused(
                f"tenant {tenant} has {running} runs going, its limit of concurrent runs; start this one "
                "when one of them ends",
                "concurrent_runs",
                CONCURRENCY_RETRY_SECONDS,
            )
        if not (policy.tokens_per_day or policy.usd_per_day):
            return asked
        tokens_left, usd_left = await self.left_today(tenant, policy)
        if (tokens_left is not None and tokens_left <= 0) or (usd_left is not None and usd_left <= 0):
            what = (
                f"{policy.tokens_per_day:,} tokens"
                if tokens_left is not None and tokens_left <= 0
                else f"${policy.usd_per_day:,.2f}"
            )
            raise QuotaRefused(
                f"tenant {tenant} has used its {what} for today (UTC); runs start again after midnight UTC",
                "daily_quota",
                _seconds_to_midnight(),
            )
        slots = policy.concurrent_runs or 1
        tokens = _smaller(
            asked.token_budget,
            tokens_left,
            policy.tokens_per_day // slots if policy.tokens_per_day else None,
        )
        usd = _smaller(
            asked.cost_budget_usd,
            usd_left,
            policy.usd_per_day / slots if policy.usd_per_day else None,
        )
        return Admission(int(tokens) if tokens is not None else None, usd)

    async def held(self, tenant: str, run_id: str, asked: Admission) -> Admission | None:
        """The admission already reserved for `run_id` (an admission tried again after its reserve was
        written), or None. Only a tenant with a daily limit reserves; a budget of a kind its limit does
        not have stays what the run asked."""
        policy = self._policies.of(tenant)
        if not (policy.tokens_per_day or policy.usd_per_day):
            return None
        row = await self._db.fetchone(
            "SELECT reserved_tokens, reserved_usd FROM cairn_usage WHERE run_id = ? AND tenant = ?",
            (run_id, tenant),
        )
        if row is None:
            return None
        return Admission(
            int(row[0]) if policy.tokens_per_day else asked.token_budget,
            float(row[1]) if policy.usd_per_day else asked.cost_budget_usd,
        )

    async def started(self, tenant: str, run_id: str, admission: Admission) -> None:
        self._recent[run_id] = (tenant, time.monotonic())
        policy = self._policies.of(tenant)
        if policy.tokens_per_day or policy.usd_per_day:
            await self._db.execute(
                "INSERT INTO cairn_usage (run_id, tenant, day, reserved_tokens, reserved_usd) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
                (run_id, tenant, _today(), admission.token_budget or 0, admission.cost_budget_usd or 0.0),
            )

    async def _running(self, tenant: str, policy: TenantPolicy, exclude: str | None = None) -> int:
        if not policy.concurrent_runs:
            return 0
        now = time.monotonic()
        for run_id, (_, when) in list(self._recent.items()):
            if now - when > VISIBILITY_GRACE_SECONDS:
                del self._recent[run_id]
        visible = {
            execution.id
            async for execution in self._temporal.list_workflows(
                runs_query(tenant, running_only=True), limit=policy.concurrent_runs + len(self._recent) + 1
            )
        }
        recent = {run_id for run_id, (owner, _) in self._recent.items() if owner == tenant}
        return len((visible | recent) - {exclude})

    # -- the day's ledger -------------------------------------------------------------------------

    async def left_today(self, tenant: str, policy: TenantPolicy) -> tuple[int | None, float | None]:
        """Tokens and dollars the tenant has left today (None where it has no such limit): its limit
        less what its ended runs spent and what its running runs hold in reserve."""
        await self._settle(tenant)
        row = await self._db.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN settled = 1 THEN used_tokens ELSE reserved_tokens END), 0), "
            "COALESCE(SUM(CASE WHEN settled = 1 THEN used_usd ELSE reserved_usd END), 0) "
            "FROM cairn_usage WHERE tenant = ? AND day = ?",
            (tenant, _today()),
        )
        spent_tokens, spent_usd = (int(row[0]), float(row[1])) if row else (0, 0.0)
        return (
            policy.tokens_per_day - spent_tokens if policy.tokens_per_day else None,
            policy.usd_per_day - spent_usd if policy.usd_per_day else None,
        )

    async def _settle(self, tenant: str) -> None:
        """Replace the reserve of each of today's ended runs by what it spent, read from its status."""
        rows = await self._db.fetchall(
            "SELECT run_id FROM cairn_usage WHERE tenant = ? AND day = ? AND settled = 0", (tenant, _today())
        )
        for (run_id,) in rows:
            handle = self._temporal.get_workflow_handle(run_id)
            try:
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    continue
                status = await handle.query(QUERY_STATUS, result_type=RunStatus, rpc_timeout=QUERY_TIMEOUT)
            except RPCError:
                continue  # Read again next time; meanwhile the reserve counts, which errs on the safe side.
            usage = status.usage
            await self._db.execute(
                "UPDATE cairn_usage SET used_tokens = ?, used_usd = ?, settled = 1 WHERE run_id = ?",
                (usage.input_tokens + usage.output_tokens, usage.cost_usd, run_id),
            )

    async def check_raise(self, tenant: str, run_id: str, raised: RaiseBudget) -> tuple[int, float] | None:
        """Refuse (QuotaRefused) a raise that would take more than the day has left. Returns the reserve the
        run holds once the raise is made (for `reserve`), or None when the tenant has no daily limit.
        A limit the raise leaves out (None) stays as it was, and so does its reserve."""
        policy = self._policies.of(tenant)
        if not (policy.tokens_per_day or policy.usd_per_day):
            return None
        row = await self._db.fetchone(
            "SELECT reserved_tokens, reserved_usd, settled FROM cairn_usage WHERE run_id = ?", (run_id,)
        )
        held_tokens, held_usd = (int(row[0]), float(row[1])) if row and not row[2] else (0, 0.0)
        tokens_left, usd_left = await self.left_today(tenant, policy)
        new_tokens = raised.token_budget if raised.token_budget is not None else held_tokens
        new_usd = raised.cost_budget_usd if raised.cost_budget_usd is not None else held_usd
        if tokens_left is not None and new_tokens - held_tokens > tokens_left:
            raise QuotaRefused(
                f"a token budget of {new_tokens:,} would take more than the {tokens_left + held_tokens:,} "
                f"tokens tenant {tenant} has left for this run today",
                "daily_quota",
                _seconds_to_midnight(),
            )
        if usd_left is not None and new_usd - held_usd > usd_left:
            raise QuotaRefused(
                f"a cost budget of ${new_usd:,.2f} would take more than the ${usd_left + held_usd:,.2f} "
                f"tenant {tenant} has left for this run today",
                "daily_quota",
                _seconds_to_midnight(),
            )
        return new_tokens, new_usd

    async def reserve(self, run_id: str, held: tuple[int, float]) -> None:
        """Record the reserve of a run whose budget was raised (the run accepted the raise)."""
        await self._db.execute(
            "UPDATE cairn_usage SET reserved_tokens = ?, reserved_usd = ? WHERE run_id = ? AND settled = 0",
            (held[0], held[1], run_id),
        )

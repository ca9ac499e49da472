"""Scheduled research on Temporal Schedules: create, list, describe, pause, unpause, trigger, backfill
and delete a tenant's schedules. `cairn schedule` and `/v1/schedules` are both built on this.

Temporal owns the timing (cron in a time zone), the overlap policy, pause, trigger and backfill; Cairn
adds who a schedule belongs to and what its runs are. A schedule's id is `<tenant>.sched-<hex>`
(common/tenancy.py) and it carries the CairnTenant search attribute; each run it starts is a
ResearchWorkflow with the same tenant (attribute and input), the schedule's id in its input (so it finds
its predecessor, workflows/living.py) and the tenant's fairness key, so scheduled runs are the
tenant's runs in every way a started one is.

Overlap: when a run is still going as the next falls due, the next is skipped by default (`skip`): a
recurring question answered twice at once costs twice and says nothing new, and a run waiting for
approval would otherwise pile up copies of itself. Any of Temporal's policies may be chosen per
schedule. A backfill runs its times one after another (`buffer_all`) unless told otherwise, so each
backfilled run has the one before it to compare with.

Must never: act on a schedule before `owned` checks its tenant (another tenant's schedule is a
schedule that does not exist), or let a request body choose a schedule's tenant or id.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleBackfill,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import Priority, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from client.api import OWNER, PHASE, TENANT, CairnClient, CairnError
from common.domains import DomainPolicy
from common.models import ResearchInput, RunRequest
from common.names import RESEARCH_WORKFLOW
from common.tenancy import SCHEDULE_ID_PATTERN, is_schedule_id, valid_tenant
from workflows.calls import WORKFLOW_TASK_TIMEOUT

Overlap = Literal["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"]
OVERLAPS: dict[str, ScheduleOverlapPolicy] = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer_all": ScheduleOverlapPolicy.BUFFER_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate_other": ScheduleOverlapPolicy.TERMINATE_OTHER,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}
MAX_CRON_CHARS = 200
MAX_NOTE_CHARS = 500
MAX_SCHEDULES = 1000  # listed per tenant


class ScheduleRequest(RunRequest):
    """A schedule as a person asks for it (`POST /v1/schedules`): a run request and when to run it."""

    cron: str = Field(max_length=MAX_CRON_CHARS, description="e.g. '0 8 * * 1' (Mondays at 08:00)")
    time_zone: str = Field(default="UTC", max_length=64, description="an IANA zone, e.g. Europe/Paris")
    overlap: Overlap = Field(default="skip", description="when a run is still going as the next is due")

    @field_validator("cron")
    @classmethod
    def _cron_shape(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the cron expression is empty")
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value[:64]!r} is not an IANA time zone (e.g. UTC, Europe/Paris)") from None
        return value


class ScheduledRun(BaseModel):
    run_id: str
    scheduled_at: datetime | None = None
    started_at: datetime | None = None


class ScheduleView(BaseModel):
    """A schedule as Temporal describes it, in Cairn's terms."""

    id: str
    tenant: str
    question: str
    cron: str
    time_zone: str
    overlap: str
    auto_approve: bool = False
    paused: bool = False
    note: str | None = None
    created_at: datetime | None = None
    next_runs: list[datetime] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list, description="runs it started that are still going")
    recent: list[ScheduledRun] = Field(default_factory=list, description="runs it started, oldest first")
    runs_started: int = 0
    skipped_overlap: int = Field(default=0, description="times a run was due but the last still ran")
    request: dict[str, Any] = Field(default_factory=dict, description="the schedule's run options")


class Backfill(BaseModel):
    start: datetime
    end: datetime
    overlap: Overlap = "buffer_all"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Schedules:
    def __init__(self, cairn: CairnClient) -> None:
        self.cairn = cairn

    @property
    def _temporal(self) -> Client:
        return self.cairn.temporal

    def _refusal(self, schedule_id: str, err: RPCError, doing: str) -> CairnError:
        if err.status == RPCStatusCode.NOT_FOUND:
            return CairnError(f"no schedule with id {schedule_id}", "not_found")
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            return CairnError(f"cannot {doing}: {' '.join(err.message.split())[:300]}", "invalid")
        if err.status == RPCStatusCode.ALREADY_EXISTS:
            return CairnError(f"a schedule with id {schedule_id} already exists", "conflict")
        return CairnError(
            f"cannot {doing} now: {' '.join(err.message.split())[:300]}",
            "unavailable" if err.status == RPCStatusCode.UNAVAILABLE else "refused",
        )

    async def create(
        self,
        tenant: str,
        request: ScheduleRequest,
        *,
        fairness_weight: float | None = None,
        domains: DomainPolicy | None = None,
    ) -> ScheduleView:
        """`domains` is the tenant's domain policy now (the API's or the CLI's, never the caller's): each
        scheduled run carries it, as a run started now would."""
        valid_tenant(tenant)
        schedule_id = f"{tenant}.sched-{uuid.uuid4().hex[:12]}"
        run = ResearchInput.model_validate(
            {
                **request.model_dump(include=set(RunRequest.model_fields)),
                "tenant": tenant,
                "schedule_id": schedule_id,
                "domains": domains,
            }
        )
        registered = await self.cairn.registered_search_attributes()
        if TENANT.name not in registered:
            raise CairnError(
                f"the Temporal namespace has no {TENANT.name} search attribute: schedules are kept per tenant "
                "by it (`cairn dev` registers it)",
                "unavailable",
            )
        pairs = [
            SearchAttributePair(key, value)
            for key, value in ((PHASE, "planning"), (OWNER, self.cairn.owner), (TENANT, tenant))
            if key.name in registered
        ]
        memo = {"question": run.question[:200], "schedule": request.model_dump(mode="json")}
        try:
            await self._temporal.create_schedule(
                schedule_id,
                Schedule(
                    action=ScheduleActionStartWorkflow(
                        RESEARCH_WORKFLOW,
                        run,
                        # Temporal appends the time each run was due: `<schedule id>-<time>`.
                        id=schedule_id,
                        task_queue=self.cairn.task_queue,
                        typed_search_attributes=TypedSearchAttributes(pairs),
                        memo={"question": run.question[:200]},
                        static_summary=run.question[:200],
                        task_timeout=WORKFLOW_TASK_TIMEOUT,
                        priority=Priority(fairness_key=tenant, fairness_weight=fairness_weight),
                    ),
                    spec=ScheduleSpec(cron_expressions=[request.cron], time_zone_name=request.time_zone),
                    policy=SchedulePolicy(overlap=OVERLAPS[request.overlap]),
                    state=ScheduleState(note=f"created by {self.cairn.owner}"),
                ),
                memo=memo,
                search_attributes=TypedSearchAttributes([SearchAttributePair(TENANT, tenant)]),
            )
        except RPCError as err:
            raise self._refusal(schedule_id, err, "create the schedule") from None
        return await self.describe(tenant, schedule_id)

    async def owned(self, tenant: str, schedule_id: str) -> tuple[ScheduleHandle, ScheduleDescription]:
        """The schedule and its description if it is `tenant`'s; else the same not_found as for a schedule
        that does not exist."""
        missing = CairnError(f"no schedule with id {schedule_id[:200]}", "not_found")
        if not is_schedule_id(schedule_id):
            raise missing
        handle = self._temporal.get_schedule_handle(schedule_id)
        try:
            described = await handle.describe()
        except RPCError as err:
            raise self._refusal(schedule_id, err, "read the schedule") from None
        if described.typed_search_attributes.get(TENANT) != tenant:
            raise missing
        return handle, described

    async def describe(self, tenant: str, schedule_id: str) -> ScheduleView:
        _, described = await self.owned(tenant, schedule_id)
        return await self._view(tenant, described)

    async def _view(self, tenant: str, described: ScheduleDescription) -> ScheduleView:
        memo = await described.memo()
        kept = memo.get("schedule")
        request: dict[str, Any] = kept if isinstance(kept, dict) else {}
        spec, state, info = described.schedule.spec, described.schedule.state, described.info
        return ScheduleView(
            id=described.id,
            tenant=tenant,
            question=str(request.get("question") or memo.get("question") or ""),
            cron=" | ".join(spec.cron_expressions) or str(request.get("cron", "")),
            time_zone=spec.time_zone_name or "UTC",
            overlap=described.schedule.policy.overlap.name.lower(),
            auto_approve=bool(request.get("auto_approve", False)),
            paused=state.paused,
            note=state.note,
            created_at=info.created_at,
            next_runs=list(info.next_action_times)[:5],
            running=[
                a.workflow_id
                for a in info.running_actions
                if isinstance(a, ScheduleActionExecutionStartWorkflow)
            ],
            recent=[
                ScheduledRun(
                    run_id=a.action.workflow_id, scheduled_at=a.scheduled_at, started_at=a.started_at
                )
                for a in info.recent_actions
                if isinstance(a.action, ScheduleActionExecutionStartWorkflow)
            ],
            runs_started=info.num_actions,
            skipped_overlap=info.num_actions_skipped_overlap,
            request=request,
        )

    async def list(self, tenant: str) -> list[ScheduleView]:
        """The tenant's schedules, each described (a listing entry lacks the running and recent runs)."""
        valid_tenant(tenant)
        views = []
        try:
            listing = await self._temporal.list_schedules(f"{TENANT.name} = '{tenant}'")
            async for entry in listing:
                match = SCHEDULE_ID_PATTERN.match(entry.id)
                if match is None or match.group(1) != tenant:
                    continue  # Belt and braces: the query already selected the tenant's.
                if entry.typed_search_attributes.get(TENANT) != tenant:
                    continue
                try:
                    views.append(await self.describe(tenant, entry.id))
                except CairnError as err:
                    if err.kind != "not_found":  # Deleted between the listing and the describe.
                        raise
                if len(views) >= MAX_SCHEDULES:
                    break
        except RPCError as err:
            raise self._refusal("", err, "list schedules") from None
        return sorted(views, key=lambda v: (v.created_at or datetime.min.replace(tzinfo=UTC), v.id))

    async def pause(self, tenant: str, schedule_id: str, note: str = "") -> ScheduleView:
        handle, _ = await self.owned(tenant, schedule_id)
        await self._act(
            schedule_id, "pause the schedule", handle.pause(note=note[:MAX_NOTE_CHARS] or "paused")
        )
        return await self.describe(tenant, schedule_id)

    async def unpause(self, tenant: str, schedule_id: str, note: str = "") -> ScheduleView:
        handle, _ = await self.owned(tenant, schedule_id)
        await self._act(
            schedule_id, "unpause the schedule", handle.unpause(note=note[:MAX_NOTE_CHARS] or "unpaused")
        )
        return await self.describe(tenant, schedule_id)

    async def trigger(self, tenant: str, schedule_id: str) -> None:
        """A run now, under the schedule's own overlap policy (skipped if one still runs, by default)."""
        handle, described = await self.owned(tenant, schedule_id)
        recent = described.info.recent_actions
        if recent:
            # Temporal names a run by its schedule and the second it was due: a trigger within the
            # second of the last run would reuse that run's id (and become the id's latest run).
            due = recent[-1].scheduled_at.replace(microsecond=0) + timedelta(seconds=1)
            wait = (due - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))
        await self._act(schedule_id, "trigger the schedule", handle.trigger())

    async def backfill(self, tenant: str, schedule_id: str, backfill: Backfill) -> ScheduleView:
        start, end = _aware(backfill.start), _aware(backfill.end)
        if end <= start:
            raise CairnError("a backfill's end must come after its start", "invalid")
        handle, _ = await self.owned(tenant, schedule_id)
        await self._act(
            schedule_id,
            "backfill the schedule",
            handle.backfill(ScheduleBackfill(start_at=start, end_at=end, overlap=OVERLAPS[backfill.overlap])),
        )
        return await self.describe(tenant, schedule_id)

    async def delete(self, tenant: str, schedule_id: str) -> None:
        """The schedule stops; the runs it started stay (they are the tenant's runs)."""
        handle, _ = await self.owned(tenant, schedule_id)
        await self._act(schedule_id, "delete the schedule", handle.delete())

    async def _act(self, schedule_id: str, doing: str, call: Any) -> None:
        try:
            await call
        except RPCError as err:
            raise self._refusal(schedule_id, err, doing) from None

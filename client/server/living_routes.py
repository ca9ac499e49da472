"""The API's living research: `/v1/schedules` (Temporal Schedules of a tenant's question) and
`POST /v1/runs/{id}/followup` (a new run that builds on a finished one).

Every route authenticates and checks the role through routes.py's `Reader`/`Writer`; a schedule's
tenant is checked by `Schedules.owned` (client/schedules.py) and a run's by `owned`, before anything
reaches either, so another tenant's schedule or run is a 404 like one that does not exist.

Must never: take a schedule's tenant or id, or a run's predecessor, from a request body.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from temporalio.client import WorkflowExecutionStatus

from client.schedules import MAX_NOTE_CHARS, Backfill, ScheduleRequest, Schedules, ScheduleView
from client.server.app import Services
from client.server.problems import Problem
from client.server.routes import Reader, StartedRun, Svc, Writer, _Body, admitted_start, owned
from common.models import RunRequest
from common.tenancy import library_scope
from common.tool_models import CorpusResults

schedules = APIRouter(tags=["schedules"])
followups = APIRouter(tags=["runs"])
library = APIRouter(tags=["library"])


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]


class Note(_Body):
    note: str = Field(default="", max_length=MAX_NOTE_CHARS)


class BackfillBody(Backfill, _Body):
    """Runs for every time the schedule would have run between `start` and `end` (ISO 8601)."""


class Triggered(BaseModel):
    id: str
    accepted: str = "trigger"


def _schedules(services: Services) -> Schedules:
    return Schedules(services.cairn)


@schedules.post("/schedules", status_code=201, response_model=ScheduleView, summary="Schedule a question")
async def create_schedule(
    body: ScheduleRequest, principal: Writer, services: Svc, response: Response
) -> ScheduleView:
    tenant = principal.tenant
    view = await _schedules(services).create(
        tenant,
        body,
        fairness_weight=services.policies.of(tenant).weight,
        domains=services.policies.domains_of(tenant),
    )
    response.headers["Location"] = f"/v1/schedules/{view.id}"
    return view


@schedules.get("/schedules", response_model=ScheduleList, summary="The tenant's schedules")
async def list_schedules(principal: Reader, services: Svc) -> ScheduleList:
    return ScheduleList(schedules=await _schedules(services).list(principal.tenant))


@schedules.get("/schedules/{schedule_id}", response_model=ScheduleView)
async def describe_schedule(schedule_id: str, principal: Reader, services: Svc) -> ScheduleView:
    """The schedule: its question, cron, overlap policy, state, next times and the runs it started."""
    return await _schedules(services).describe(principal.tenant, schedule_id)


@schedules.post("/schedules/{schedule_id}/pause", response_model=ScheduleView)
async def pause_schedule(
    schedule_id: str, principal: Writer, services: Svc, body: Note | None = None
) -> ScheduleView:
    return await _schedules(services).pause(principal.tenant, schedule_id, (body or Note()).note)


@schedules.post("/schedules/{schedule_id}/unpause", response_model=ScheduleView)
async def unpause_schedule(
    schedule_id: str, principal: Writer, services: Svc, body: Note | None = None
) -> ScheduleView:
    return await _schedules(services).unpause(principal.tenant, schedule_id, (body or Note()).note)


@schedules.post("/schedules/{schedule_id}/trigger", status_code=202, response_model=Triggered)
async def trigger_schedule(schedule_id: str, principal: Writer, services: Svc) -> Triggered:
    """A run now, under the schedule's overlap policy: with `skip`, none while one still runs."""
    await _schedules(services).trigger(principal.tenant, schedule_id)
    return Triggered(id=schedule_id)


@schedules.post("/schedules/{schedule_id}/backfill", response_model=ScheduleView)
async def backfill_schedule(
    schedule_id: str, body: BackfillBody, principal: Writer, services: Svc
) -> ScheduleView:
    return await _schedules(services).backfill(principal.tenant, schedule_id, body)


@schedules.delete("/schedules/{schedule_id}", status_code=204)
async def delete_schedule(schedule_id: str, principal: Writer, services: Svc) -> Response:
    """The schedule stops; the runs it started stay."""
    await _schedules(services).delete(principal.tenant, schedule_id)
    return Response(status_code=204)


@followups.post(
    "/runs/{run_id}/followup", status_code=201, response_model=StartedRun, summary="Follow up a finished run"
)
async def followup(
    run_id: str, body: RunRequest, principal: Writer, services: Svc, response: Response
) -> StartedRun:
    """A new run whose planner sees the earlier run's findings and sources, and whose report ends with
    what changed since it. The earlier run must have completed."""
    await owned(services, principal, run_id)
    state = await services.cairn.describe_status(run_id)
    if state != WorkflowExecutionStatus.COMPLETED:
        status = state.name.lower() if state else "unknown"
        raise Problem(
            409, f"run {run_id} is {status}; only a completed run can be followed up", code="conflict"
        )
    tenant = principal.tenant
    new_id = f"{tenant}.research-{uuid.uuid4().hex[:12]}"
    async with services.quotas.turn(tenant):
        started = await admitted_start(
            services,
            tenant,
            body,
            new_id,
            memo={"request": hashlib.sha256(body.model_dump_json().encode()).hexdigest(), "follows": run_id},
            follows=run_id,
        )
    response.headers["Location"] = f"/v1/runs/{new_id}"
    return started


@library.get("/library/search", response_model=CorpusResults, summary="Search the tenant's library")
async def search_library(
    principal: Reader,
    services: Svc,
    q: Annotated[str, Query(min_length=1, max_length=500, description="words to search for")],
    limit: Annotated[int, Query(ge=1, le=20)] = 5,
) -> CorpusResults:
    """What a run's researcher would find in the library (the tenant's finished runs' pages and
    findings), best first. Only the caller's tenant's library is searched."""
    corpus = await services.corpus()
    passages = await corpus.search(q, limit=limit, scope=library_scope(principal.tenant))
    return CorpusResults(query=q, passages=passages)

"""The web app's living research: a follow-up from a finished run's page, the tenant's schedules
(list, create, pause, unpause, run now, delete) and a search of the tenant's library.

Everything goes through the API's own route functions (client/server/living_routes.py) with the
session's principal, so the tenant, role and quota checks are the API's: another tenant's run or
schedule is the same 404 page as one that does not exist.

Must never: act for a viewer, act on a POST without the session's CSRF token (base.checked_form), or
take a schedule's tenant or id, or a follow-up's predecessor, from a form.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from client.api import CairnError
from client.schedules import Overlap, ScheduleRequest
from client.server import living_routes
from client.server.problems import Problem
from client.server.sessions import Session
from client.web.base import checked_form, page, reasons, see_other, services, signed_in
from client.web.pages import common_context, run_context
from client.web.render import source_href
from common.models import RunRequest, Source

router = APIRouter(include_in_schema=False)
OVERLAP_CHOICES: tuple[str, ...] = get_args(Overlap)
ACTIONS = ("pause", "unpause", "trigger", "delete")
LIBRARY_HITS = 10  # pages and findings listed for a search


@router.post("/runs/{run_id}/followup")
async def followup(request: Request, run_id: str) -> Response:
    """A new run that builds on this finished one; the run's page again, with the reason, if refused."""
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    values = {"question": str(form.get("question") or ""), "auto_approve": form.get("auto_approve") == "on"}
    try:
        body = RunRequest.model_validate(values)
        started = await living_routes.followup(run_id, body, session.principal, services(request), Response())
    except ValidationError as err:
        reason, status = reasons(err), 422
    except Problem as problem:
        if problem.status == 404:
            raise
        reason, status = problem.detail, problem.status
    else:
        return see_other(f"/runs/{started.id}")
    context = await run_context(request, session, run_id, followup_error=reason, followup_values=values)
    return page(request, "run.html", context, status=status)


async def _schedules_page(
    request: Request,
    session: Session,
    form_error: str | None = None,
    values: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    listed = await living_routes.list_schedules(session.principal, services(request))
    return page(
        request,
        "schedules.html",
        common_context(
            request,
            session,
            schedules=listed.schedules,
            overlaps=OVERLAP_CHOICES,
            form_error=form_error,
            values=values or {"time_zone": "UTC", "overlap": "skip"},
        ),
        status=status,
    )


@router.get("/schedules")
async def schedules_page(request: Request) -> Response:
    session = await signed_in(request)
    return await _schedules_page(request, session)


@router.post("/schedules")
async def create_schedule(request: Request) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    values: dict[str, Any] = {
        name: str(form.get(name) or "") for name in ("question", "cron", "time_zone", "overlap")
    }
    values["auto_approve"] = form.get("auto_approve") == "on"
    try:
        body = ScheduleRequest.model_validate({**values, "overlap": values["overlap"] or "skip"})
        await living_routes.create_schedule(body, session.principal, services(request), Response())
    except ValidationError as err:
        return await _schedules_page(request, session, reasons(err), values, 422)
    except CairnError as err:  # Temporal refused it: a cron it cannot read, say.
        return await _schedules_page(request, session, str(err), values, 422)
    return see_other("/schedules")


@router.post("/schedules/{schedule_id}/{action}")
async def act_on_schedule(request: Request, schedule_id: str, action: str) -> Response:
    session = await signed_in(request, "write")
    await checked_form(request, session)
    if action not in ACTIONS:
        raise Problem(404, f"no action {action[:40]!r} on a schedule", code="not_found")
    svc, principal = services(request), session.principal
    if action == "pause":
        await living_routes.pause_schedule(schedule_id, principal, svc, None)
    elif action == "unpause":
        await living_routes.unpause_schedule(schedule_id, principal, svc, None)
    elif action == "trigger":
        await living_routes.trigger_schedule(schedule_id, principal, svc)
    else:
        await living_routes.delete_schedule(schedule_id, principal, svc)
    return see_other("/schedules")


@router.get("/library")
async def library_page(request: Request, q: Annotated[str, Query(max_length=500)] = "") -> Response:
    """What a run would find in the tenant's library: its finished runs' pages and findings, best
    first, each leading where it came from (the page, or the run that found a finding)."""
    session = await signed_in(request)
    query = " ".join(q.split())
    results: list[dict[str, Any]] = []
    if query:
        # One hit per page or finding (its best passage): a long page would otherwise fill the list.
        found = await living_routes.search_library(session.principal, services(request), query, 20)
        seen: set[str] = set()
        for passage in found.passages:
            if passage.path in seen or len(seen) == LIBRARY_HITS:
                continue
            seen.add(passage.path)
            web = passage.path.startswith(("http://", "https://"))
            source = Source(
                id=str(passage.position),
                title=passage.title,
                url=passage.path if web else None,
                path=None if web else passage.path,
                via="library",
            )
            results.append({"passage": passage, "href": source_href(source), "web": web})
    return page(request, "library.html", common_context(request, session, query=query, results=results))

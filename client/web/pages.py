"""The web app's pages: the tenant's runs, a new run, one run (its plan to review, its progress
live, its report) and one of the tenant's documents (where a source that is a document leads).

Pages are rendered on the server from the run's status query; a small plain-JavaScript module
(static/app.js) follows the run's event stream and asks for the changed parts of the page again
(`/runs/{id}/live`), so the page stays current without a reload. Every run is reached through the
API's own route functions and checks (client/server/routes.py: `owned` before anything touches a run,
the quotas for a start or a raised budget), with the session's principal in place of a bearer one.

Must never: reach a run before `owned` has checked its tenant, act for a viewer, or act on a POST
without the session's CSRF token (base.checked_form).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any, cast, get_args

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import FormData

from client.api import CairnError
from client.server import routes
from client.server.app import Services
from client.server.auth import Principal, allows
from client.server.exports import export_response
from client.server.problems import Problem
from client.server.sessions import Session
from client.web import plan_editor, signin
from client.web.base import HERE, checked_form, install_errors, page, reasons, see_other, services, signed_in
from client.web.export import FORMATS, ExportFormat
from client.web.render import render_report, source_href
from common.models import (
    AddStep,
    AnswerClarification,
    Phase,
    RaiseBudget,
    RunRequest,
    RunStatus,
    Source,
    StepKind,
)

router = APIRouter(include_in_schema=False)
PHASES: tuple[str, ...] = get_args(Phase)
KINDS: tuple[str, ...] = get_args(StepKind)
ENDED = ("done", "aborted", "failed")
# After a person's action, how long the page waits for the run to show its effect before rendering.
SETTLE_SECONDS = 5.0
LIST_STATUS_SECONDS = 3.0


def view_of(phase: str) -> str:
    if phase == "awaiting_approval":
        return "review"
    if phase == "clarifying":
        return "clarify"
    return "ended" if phase in ENDED else "working"


def common_context(request: Request, session: Session, **context: Any) -> dict[str, Any]:
    return {
        "session": session,
        "principal": session.principal,
        "can_write": allows(session.principal.role, "write"),
        "csrf": session.csrf,
        **context,
    }


# -- the runs ------------------------------------------------------------------------------------


async def _summary_status(svc: Services, run_id: str) -> RunStatus | None:
    with contextlib.suppress(Exception):  # A run whose status cannot be read now is listed without it.
        return await asyncio.wait_for(svc.cairn.status(run_id), LIST_STATUS_SECONDS)
    return None


@router.get("/runs")
async def runs_page(
    request: Request,
    phase: Annotated[str | None, Query(max_length=40)] = None,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    session = await signed_in(request)
    return await _runs(request, session, phase, cursor)


async def _runs(
    request: Request,
    session: Session,
    phase: str | None,
    cursor: str | None,
    form_error: str | None = None,
    form_values: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    svc = services(request)
    chosen = phase if phase in PHASES else None
    listing = await routes.list_runs(session.principal, svc, chosen, 20, cursor)  # type: ignore[arg-type]
    statuses = await asyncio.gather(*(_summary_status(svc, r.id) for r in listing.runs))
    rows = []
    for run, state in zip(listing.runs, statuses, strict=True):
        steps = state.plan.steps if state and state.plan else []
        rows.append(
            {
                "id": run.id,
                "question": (state.question if state else run.question) or "",
                "phase": (state.phase if state else run.phase) or run.status,
                "done": sum(1 for s in steps if s.status in ("done", "failed", "skipped")),
                "total": len(steps),
                "usage": state.usage if state else None,
                "started": (run.started_at or "")[:19].replace("T", " "),
            }
        )
    return page(
        request,
        "runs.html",
        common_context(
            request,
            session,
            rows=rows,
            phases=PHASES,
            phase=chosen,
            next_cursor=listing.next_cursor,
            form_error=form_error,
            values=form_values or {},
        ),
        status=status,
    )


def _number(form: FormData, name: str, kind: type[int] | type[float]) -> int | float | None:
    raw = str(form.get(name) or "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name.replace('_', ' ')} must be a number") from None


@router.post("/runs")
async def start_run(request: Request) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    values = {k: str(v) for k, v in form.items() if k != "csrf"}
    try:
        options: dict[str, Any] = {
            "question": str(form.get("question") or ""),
            "auto_approve": form.get("auto_approve") == "on",
            "clarify": str(form.get("clarify") or "auto"),
        }
        for name, kind in (
            ("max_steps", int),
            ("max_parallel_steps", int),
            ("token_budget", int),
            ("cost_budget_usd", float),
        ):
            value = _number(form, name, kind)
            if value is not None:
                options[name] = value
        body = RunRequest.model_validate(options)
    except ValidationError as err:
        message = reasons(err)
        return await _runs(request, session, None, None, message, values, 422)
    except ValueError as err:
        return await _runs(request, session, None, None, str(err), values, 422)
    try:
        started = await routes.start_run(body, Response(), session.principal, services(request))
    except Problem as problem:
        return await _runs(request, session, None, None, problem.detail, values, problem.status)
    return see_other(f"/runs/{started.id}")


# -- one run -------------------------------------------------------------------------------------


def _sources_so_far(svc: Services, run_id: str) -> list[dict[str, str | None]]:
    """The sources the run's steps have reported, from this process's copy of the run's event stream
    (the page adds those that arrive later itself)."""
    seen: dict[str, dict[str, str | None]] = {}
    for event in svc.feeds.feed(run_id).events:
        if event.type != "step_finished":
            continue
        for raw in json.loads(event.data).get("sources") or []:
            source = Source.model_validate(raw)
            key = source.url or source.path or source.title
            if key and key not in seen:
                seen[key] = {"key": key, "title": source.title or key, "href": source_href(source)}
    return list(seen.values())


async def run_context(request: Request, session: Session, run_id: str, **extra: Any) -> dict[str, Any]:
    svc = services(request)
    await routes.owned(svc, session.principal, run_id)
    status = await svc.cairn.status(run_id)
    view = view_of(status.phase)
    context = common_context(request, session, run_id=run_id, status=status, view=view, kinds=KINDS, **extra)
    if view == "review" and "editor" not in context:
        context["editor"] = plan_editor.rows_of(status.plan)
    if view == "working":
        context["sources"] = _sources_so_far(svc, run_id)
    if view == "ended":
        context["report"] = await _report(svc, session.principal, run_id, status)
    return context


async def _report(svc: Services, principal: Principal, run_id: str, status: RunStatus) -> Any:
    if status.phase == "failed":
        return None
    try:
        result = await routes.written_report(svc, principal, run_id)
    except (Problem, CairnError):
        return None
    return render_report(result.report, result.sources)


@router.get("/runs/{run_id}")
async def run_page(request: Request, run_id: str) -> Response:
    session = await signed_in(request)
    return page(request, "run.html", await run_context(request, session, run_id))


@router.get("/runs/{run_id}/live")
async def run_live(request: Request, run_id: str) -> Response:
    """The run's panel alone, for the page's script to compare and swap in."""
    session = await signed_in(request)
    return page(request, "panel.html", await run_context(request, session, run_id))


@router.get("/runs/{run_id}/events")
async def run_events(
    request: Request,
    run_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """The API's event stream of the run, for the session's EventSource (which cannot send an
    Authorization header): the same tenant check, the same stream, the same Last-Event-ID."""
    session = await signed_in(request)
    svc = services(request)
    await routes.owned(svc, session.principal, run_id)
    return routes.event_stream(svc, run_id, last_event_id, after)


@router.get("/runs/{run_id}/report.{fmt}")
async def report_download(request: Request, run_id: str, fmt: str) -> Response:
    """The report as a file: markdown, HTML, PDF or DOCX (client/web/export.py)."""
    session = await signed_in(request)
    if fmt not in FORMATS:
        raise Problem(404, f"no report format {fmt[:20]!r}; one of {', '.join(FORMATS)}", code="not_found")
    svc = services(request)
    result = await routes.written_report(svc, session.principal, run_id)
    return await export_response(svc, session.principal, result, cast(ExportFormat, fmt))


@router.get("/runs/{run_id}/artifacts/{name:path}")
async def artifact(request: Request, run_id: str, name: str) -> Response:
    session = await signed_in(request)
    return await routes.artifact(run_id, name, session.principal, services(request))


@router.get("/documents")
async def document_page(
    request: Request, path: Annotated[str, Query(min_length=1, max_length=4096)]
) -> Response:
    """One of the tenant's documents as its runs searched it: a source that is a document links here."""
    session = await signed_in(request)
    stored = await routes.read_document(session.principal, services(request), path)
    return page(request, "document.html", common_context(request, session, stored=stored))


async def _settled(svc: Services, run_id: str, changed: Any) -> None:
    """Wait (briefly) until the run's status shows the effect of a signal, so the page that follows
    shows it too; the live page catches up by itself if it takes longer."""
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(CairnError):
            if changed(await svc.cairn.status(run_id)):
                return
        await asyncio.sleep(0.1)


@router.post("/runs/{run_id}/plan")
async def edit_plan(request: Request, run_id: str) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    svc = services(request)
    await routes.owned(svc, session.principal, run_id)
    rows, op = plan_editor.apply(form)
    version = int(str(form.get("plan_version") or "0") or 0)
    if op != "save":
        notice = "Not saved yet: choose Save plan to keep your changes."
        context = await run_context(request, session, run_id, editor=rows, notice=notice)
        return page(request, "run.html", context)
    steps, errors, general = plan_editor.specs(rows)
    if not errors and not general:
        try:
            await routes.edit_plan(
                run_id, routes.PlanEdit(plan_version=version, steps=steps), session.principal, svc
            )
            return see_other(f"/runs/{run_id}?saved=1")
        except CairnError as err:
            errors, general = plan_editor.reason_of(str(err), rows)
    context = await run_context(
        request, session, run_id, editor=plan_editor.with_errors(rows, errors), plan_error=general
    )
    return page(request, "run.html", context, status=422 if errors else 409)


@router.post("/runs/{run_id}/approve")
async def approve(request: Request, run_id: str) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    svc = services(request)
    version = int(str(form.get("plan_version") or "0") or 0) or None
    await routes.approve(run_id, session.principal, svc, routes.Approve(plan_version=version))
    await _settled(svc, run_id, lambda s: s.phase != "awaiting_approval")
    return see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/answer")
async def answer(request: Request, run_id: str) -> Response:
    """The answer to the planner's clarifying questions; shown again with the reason when refused."""
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    svc = services(request)
    try:
        body = AnswerClarification(answer=str(form.get("answer") or ""))
        await routes.answer(run_id, body, session.principal, svc)
    except ValidationError as err:
        reason, status = reasons(err), 422
    except CairnError as err:
        if err.kind == "not_found":
            raise
        reason, status = str(err), 409  # No question waits any more (answered elsewhere, or timed out).
    else:
        await _settled(svc, run_id, lambda s: s.phase != "clarifying")
        return see_other(f"/runs/{run_id}")
    context = await run_context(request, session, run_id, answer_error=reason)
    return page(request, "run.html", context, status=status)


@router.post("/runs/{run_id}/revise")
async def revise(request: Request, run_id: str) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    svc = services(request)
    version = int(str(form.get("plan_version") or "0") or 0) or None
    feedback = str(form.get("feedback") or "").strip()
    if not feedback:
        context = await run_context(request, session, run_id, feedback_error="Say what should change.")
        return page(request, "run.html", context, status=422)
    await routes.revise(
        run_id, routes.Revise(feedback=feedback, plan_version=version), session.principal, svc
    )
    await _settled(
        svc,
        run_id,
        lambda s: s.phase == "awaiting_approval" and s.plan is not None and s.plan.version != version,
    )
    return see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/skip")
async def skip(request: Request, run_id: str) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    step_id = str(form.get("step_id") or "")[:20]
    await routes.skip(run_id, routes.Skip(step_id=step_id), session.principal, services(request))
    return see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/steps")
async def add_step(request: Request, run_id: str) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    try:
        body = AddStep(title=str(form.get("title") or ""), kind=str(form.get("kind") or "research"))  # type: ignore[arg-type]
    except ValidationError as err:
        message = reasons(err)
        context = await run_context(request, session, run_id, add_error=message)
        return page(request, "run.html", context, status=422)
    await routes.add_step(run_id, body, session.principal, services(request))
    return see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/budget")
async def raise_budget(request: Request, run_id: str) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    try:
        body = RaiseBudget(
            token_budget=_number(form, "token_budget", int),  # type: ignore[arg-type]
            cost_budget_usd=_number(form, "cost_budget_usd", float),
        )
        await routes.raise_budget(run_id, body, session.principal, services(request))
    except (ValidationError, ValueError, CairnError, Problem) as err:
        if isinstance(err, Problem) and err.status == 404:
            raise
        message = err.detail if isinstance(err, Problem) else str(err).splitlines()[0]
        context = await run_context(request, session, run_id, budget_error=message)
        return page(request, "run.html", context, status=422)
    return see_other(f"/runs/{run_id}")


@router.post("/runs/{run_id}/abort")
async def abort(request: Request, run_id: str) -> Response:
    session = await signed_in(request, "write")
    form = await checked_form(request, session)
    reason = str(form.get("reason") or "").strip() or f"aborted in the web app by {session.principal.subject}"
    svc = services(request)
    await routes.abort(run_id, session.principal, svc, routes.Abort(reason=reason[:1000]))
    await _settled(svc, run_id, lambda s: s.phase in ENDED)
    return see_other(f"/runs/{run_id}")


def install(app: FastAPI) -> None:
    """The web app at `/`, beside the API: its pages, its sign-in, its static files, its error pages."""
    install_errors(app)
    app.include_router(signin.router)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

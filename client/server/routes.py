"""The API's routes: health, runs (start, list, read, steer, report, artifacts, events) and documents.

Every route names what it needs through one of three dependencies, `Reader`, `Writer` or `Admin`,
which authenticate the caller and check the role (a viewer reads; a member also writes; an admin also
manages the tenant's keys); every
route that names a run calls `owned` before anything reaches the run, so another tenant's run is a 404
like a run that does not exist. Bodies are the workflow's own pydantic models (common/models.py), so
the API validates exactly what the workflow would.

Signals are accepted (202): the run acts on them in order, and its events and status show the effect.
Updates (a plan edit, a budget raise) answer with their result, or 409 with the run's reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from client.api import CairnError
from client.listing import Position, newest_first
from client.server.app import Services, services_of
from client.server.auth import Action, Principal, Role, allows
from client.server.exports import export_response
from client.server.problems import Problem
from client.server.quotas import Admission, QuotaRefused
from client.server.tenants import runs_query
from client.web.export import MEDIA_TYPES, format_of_accept
from common.models import (
    MAX_FEEDBACK_CHARS,
    MAX_REASON_CHARS,
    MAX_STEP_ID_CHARS,
    MAX_STEPS,
    AddStep,
    AnswerClarification,
    BudgetStatus,
    Clarification,
    Phase,
    Plan,
    RaiseBudget,
    ResearchInput,
    ResearchResult,
    RunRequest,
    RunStatus,
    StepSpec,
)
from common.tool_models import DocumentEntry, IngestReport, StoredDocument

log = logging.getLogger("cairn.api")

MAX_IDEMPOTENCY_KEY_CHARS = 200
MAX_LIST = 100
# A run whose phase is done closes within its next workflow task; the report waits that long for it.
CLOSING_SECONDS = 10.0


# -- who is asking -------------------------------------------------------------------------------


async def caller(request: Request) -> Principal:
    return await services_of(request).identify(request)


_REFUSALS = {
    "write": "the {role} role may read runs and documents but not change them",
    "admin": "the {role} role may not manage API keys; an admin of the tenant may",
}


def _needs(action: Action) -> Any:
    async def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        if not allows(principal.role, action):
            detail = _REFUSALS.get(action, "the {role} role may not do this").format(role=principal.role)
            raise Problem(403, detail, code="forbidden")
        return principal

    return check


Reader = Annotated[Principal, Depends(_needs("read"))]
Writer = Annotated[Principal, Depends(_needs("write"))]
Admin = Annotated[Principal, Depends(_needs("admin"))]
Svc = Annotated[Services, Depends(services_of)]


async def owned(services: Services, principal: Principal, run_id: str) -> str:
    await services.index.check(principal.tenant, run_id)
    return run_id


# -- health --------------------------------------------------------------------------------------

health = APIRouter(tags=["health"])


@health.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/readyz", summary="Temporal and the database answer")
async def readyz(services: Svc) -> JSONResponse:
    """Unauthenticated, so it says which part is down but not why; the reason goes to the log."""
    checks: dict[str, str] = {}
    try:
        await services.cairn.temporal.workflow_service.get_system_info(GetSystemInfoRequest())
        checks["temporal"] = "ok"
    except RPCError as err:
        log.warning("not ready: Temporal: %s", " ".join(err.message.split())[:300])
        checks["temporal"] = "unavailable"
    try:
        await services.db.fetchone("SELECT 1")
        checks["database"] = "ok"
    except Exception as err:
        log.warning("not ready: database: %s", str(err)[:300])
        checks["database"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", "checks": checks}, 200 if ready else 503)


# -- runs ----------------------------------------------------------------------------------------

runs = APIRouter(tags=["runs"])


class StartedRun(BaseModel):
    id: str
    tenant: str
    created: bool = Field(
        description="false when an earlier request with the same Idempotency-Key started it"
    )
    token_budget: int | None = None
    cost_budget_usd: float | None = None


class RunSummary(BaseModel):
    id: str
    question: str | None
    phase: str | None
    status: str
    started_at: str | None
    closed_at: str | None


class RunList(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class RunView(RunStatus):
    """The `status` query's answer, with the run's id and tenant. The worker's file path of the
    report is left out: the report is at `/v1/runs/{id}/report`."""

    id: str
    tenant: str


class _Body(BaseModel):
    """A request body: an unknown field is refused, so a typo (`plan_verison`) is an error, not an
    approval of whatever plan is current."""

    model_config = ConfigDict(extra="forbid")


class Approve(_Body):
    plan_version: int | None = None


class Revise(_Body):
    feedback: str = Field(max_length=MAX_FEEDBACK_CHARS)
    plan_version: int | None = None


class Abort(_Body):
    reason: str = Field(default="aborted through the API", max_length=MAX_REASON_CHARS)


class Skip(_Body):
    step_id: str = Field(max_length=MAX_STEP_ID_CHARS)


class PlanEdit(_Body):
    plan_version: int
    steps: list[StepSpec] = Field(max_length=MAX_STEPS)


class Accepted(BaseModel):
    id: str
    accepted: str
    plan_version: int | None = None


def _idempotent_id(tenant: str, key: str) -> str:
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise Problem(
            422,
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters",
            code="invalid",
        )
    digest = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[:24]
    return f"{tenant}.idem-{digest}"


async def _same_request(services: Services, run_id: str, digest: str) -> bool | None:
    """Whether run `run_id` was started by a request with body digest `digest` (None: no such run)."""
    try:
        memo = await (await services.cairn.temporal.get_workflow_handle(run_id).describe()).memo()
    except RPCError:
        return None
    return memo.get("request") == digest


def quota_problem(refused: QuotaRefused) -> Problem:
    """A tenant's limit as the API answers it: 429, with when to come back."""
    return Problem(429, refused.detail, code=refused.code, headers={"Retry-After": str(refused.retry_after)})


async def admitted_start(
    services: Services,
    tenant: str,
    body: RunRequest,
    run_id: str,
    *,
    memo: dict[str, str],
    once: bool = False,
    **fields: Any,
) -> StartedRun:
    """The one way the API starts a run: `body` admitted under the tenant's quotas (a 429 Problem
    when a limit stops it) and started as `run_id` with what the server, never the caller, decides:
    the tenant, its domain policy, the admitted budgets, its fairness weight, and `fields` (a
    follow-up's `follows`). The answer says whether it was started now (`created`: not by an earlier
    request with the same id) and with which budgets. Call with `services.quotas.turn(tenant)` held."""
    try:
        admission = await services.quotas.admit(tenant, Admission(body.token_budget, body.cost_budget_usd))
    except QuotaRefused as refused:
        raise quota_problem(refused) from None
    request = ResearchInput.model_validate(
        {
            **body.model_dump(),
            "tenant": tenant,
            "domains": services.policies.domains_of(tenant),
            "token_budget": admission.token_budget,
            "cost_budget_usd": admission.cost_budget_usd,
            **fields,
        }
    )
    started = await services.cairn.start_run(
        request,
        run_id,
        fairness_weight=services.policies.of(tenant).weight,
        memo={"question": request.question[:200], **memo},
        once=once,
    )
    if started.created:
        services.index.remember(run_id, tenant)
        await services.quotas.started(tenant, run_id, admission)
    return StartedRun(
        id=run_id,
        tenant=tenant,
        created=started.created,
        token_budget=admission.token_budget,
        cost_budget_usd=admission.cost_budget_usd,
    )


@runs.post("/runs", status_code=201, response_model=StartedRun, summary="Start a research run")
async def start_run(
    body: RunRequest,
    response: Response,
    principal: Writer,
    services: Svc,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> StartedRun:
    tenant = principal.tenant
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    run_id = (
        _idempotent_id(tenant, idempotency_key)
        if idempotency_key is not None
        else f"{tenant}.research-{uuid.uuid4().hex[:12]}"
    )
    async with services.quotas.turn(tenant):
        if idempotency_key is not None:
            same = await _same_request(services, run_id, digest)
            if same is not None:
                return _repeat(response, run_id, tenant, same)
        started = await admitted_start(
            services, tenant, body, run_id, memo={"request": digest}, once=idempotency_key is not None
        )
    if not started.created:
        if idempotency_key is None:
            raise Problem(409, f"a run with id {run_id} already exists", code="conflict")
        return _repeat(response, run_id, tenant, await _same_request(services, run_id, digest))
    response.headers["Location"] = f"/v1/runs/{run_id}"
    return started


def _repeat(response: Response, run_id: str, tenant: str, same: bool | None) -> StartedRun:
    if same is False:
        raise Problem(
            422,
            "this Idempotency-Key was used for a different request; use a new key for a new run",
            code="idempotency_key_reused",
        )
    response.status_code = 200
    response.headers["Location"] = f"/v1/runs/{run_id}"
    return StartedRun(id=run_id, tenant=tenant, created=False)


def _query_tag(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def _cursor(query: str, position: Position | None) -> str | None:
    if position is None:
        return None
    bound = {"q": _query_tag(query), "s": position.start.isoformat(), "i": position.id}
    return base64.urlsafe_b64encode(json.dumps(bound).encode()).decode().rstrip("=")


def _position(query: str, cursor: str | None) -> Position | None:
    """Where `cursor` says the last page ended; it must come from this same listing (same tenant and
    filter): a cursor of another listing is refused rather than silently mixing two."""
    if cursor is None:
        return None
    try:
        bound = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if bound["q"] != _query_tag(query):
            raise ValueError("another listing")
        start = datetime.fromisoformat(bound["s"])
        if start.tzinfo is None or not isinstance(bound["i"], str):
            raise ValueError("not a position")
        return Position(start=start, id=bound["i"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise Problem(422, "cursor is not one this listing gave", code="invalid") from None


@runs.get("/runs", response_model=RunList, summary="The caller's tenant's runs")
async def list_runs(
    principal: Reader,
    services: Svc,
    phase: Phase | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 20,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
) -> RunList:
    """Newest first, by start time; `next_cursor` reads the page after this one."""
    query = runs_query(principal.tenant, phase)
    try:
        executions, last = await newest_first(services.cairn.temporal, query, limit, _position(query, cursor))
    except RPCError as err:
        raise Problem(503, f"cannot list runs now: {' '.join(err.message.split())[:200]}") from None
    page = []
    for execution in executions:
        memo = await execution.memo()
        attributes = execution.typed_search_attributes
        page.append(
            RunSummary(
                id=execution.id,
                question=memo.get("question") if isinstance(memo.get("question"), str) else None,
                phase=next(
                    (p.value for p in attributes if p.key.name == "CairnPhase" and isinstance(p.value, str)),
                    None,
                ),
                status=(execution.status or WorkflowExecutionStatus.RUNNING).name.lower(),
                started_at=execution.start_time.isoformat() if execution.start_time else None,
                closed_at=execution.close_time.isoformat() if execution.close_time else None,
            )
        )
    return RunList(runs=page, next_cursor=_cursor(query, last))


@runs.get("/runs/{run_id}", response_model=RunView, response_model_exclude={"report_path"})
async def get_run(run_id: str, principal: Reader, services: Svc) -> Response:
    """The run's status: the same fields as its `status` query."""
    await owned(services, principal, run_id)
    status = await services.cairn.status(run_id)
    # Serialised here, once: the status was validated as it was decoded, and the most read route
    # need not pay for FastAPI validating it again.
    view = RunView.model_construct(**dict(status), id=run_id, tenant=principal.tenant)
    return Response(view.model_dump_json(exclude={"report_path"}), media_type="application/json")


@runs.post("/runs/{run_id}/approve", status_code=202, response_model=Accepted)
async def approve(run_id: str, principal: Writer, services: Svc, body: Approve | None = None) -> Accepted:
    """Approve the plan awaiting approval (the current version unless `plan_version` names one)."""
    await owned(services, principal, run_id)
    version = await services.cairn.approve(run_id, (body or Approve()).plan_version)
    return Accepted(id=run_id, accepted="approve", plan_version=version)


@runs.post("/runs/{run_id}/revise", status_code=202, response_model=Accepted)
async def revise(run_id: str, body: Revise, principal: Writer, services: Svc) -> Accepted:
    """Ask the planner to change the plan awaiting approval."""
    await owned(services, principal, run_id)
    version = await services.cairn.revise(run_id, body.feedback, body.plan_version)
    return Accepted(id=run_id, accepted="revise", plan_version=version)


@runs.put("/runs/{run_id}/plan", response_model=Plan)
async def edit_plan(run_id: str, body: PlanEdit, principal: Writer, services: Svc) -> Plan:
    """Replace the steps of the plan awaiting approval; 409 with the reason when the run refuses."""
    await owned(services, principal, run_id)
    return await services.cairn.edit(run_id, body.steps, body.plan_version)


@runs.post("/runs/{run_id}/abort", status_code=202, response_model=Accepted)
async def abort(run_id: str, principal: Writer, services: Svc, body: Abort | None = None) -> Accepted:
    """Stop the run: running steps are cancelled and a partial report is written."""
    await owned(services, principal, run_id)
    await services.cairn.abort(run_id, (body or Abort()).reason)
    return Accepted(id=run_id, accepted="abort")


@runs.post("/runs/{run_id}/skip", status_code=202, response_model=Accepted)
async def skip(run_id: str, body: Skip, principal: Writer, services: Svc) -> Accepted:
    """Skip a pending step, or cancel a running one."""
    await owned(services, principal, run_id)
    await services.cairn.skip_step(run_id, body.step_id)
    return Accepted(id=run_id, accepted="skip")


@runs.post("/runs/{run_id}/steps", status_code=202, response_model=Accepted)
async def add_step(run_id: str, body: AddStep, principal: Writer, services: Svc) -> Accepted:
    """Add a step to the plan of a running run."""
    await owned(services, principal, run_id)
    await services.cairn.add_step(run_id, body.title, body.kind, body.description)
    return Accepted(id=run_id, accepted="add_step")


@runs.post("/runs/{run_id}/answer", response_model=Clarification)
async def answer(run_id: str, body: AnswerClarification, principal: Writer, services: Svc) -> Clarification:
    """Answer the planner's clarifying questions (the run is `clarifying`); the run then plans. 409
    with the run's reason when no question waits."""
    await owned(services, principal, run_id)
    return await services.cairn.answer(run_id, body.answer)


@runs.post("/runs/{run_id}/budget", response_model=BudgetStatus)
async def raise_budget(run_id: str, body: RaiseBudget, principal: Writer, services: Svc) -> BudgetStatus:
    """New limits (absolute); a paused run goes on. Within the tenant's daily allowance."""
    await owned(services, principal, run_id)
    async with services.quotas.turn(principal.tenant):  # Two raises cannot both take the day's rest.
        try:
            held = await services.quotas.check_raise(principal.tenant, run_id, body)
        except QuotaRefused as refused:
            raise quota_problem(refused) from None
        budget = await services.cairn.raise_budget(
            run_id,
            token_budget=body.token_budget,
            cost_budget_usd=body.cost_budget_usd,
            deadline_seconds=body.deadline_seconds,
        )
        if held is not None:
            await services.quotas.reserve(run_id, held)
    return budget


@runs.get(
    "/runs/{run_id}/report",
    responses={
        200: {"content": {media.split(";")[0]: {} for media in ["application/json", *MEDIA_TYPES.values()]}}
    },
    summary="The report: markdown; the whole result with Accept: application/json; or a file by Accept "
    "(text/html, application/pdf, DOCX's type)",
)
async def report(run_id: str, request: Request, principal: Reader, services: Svc) -> Response:
    result = await written_report(services, principal, run_id)
    accept = request.headers.get("accept", "")
    if "application/json" in accept:
        return JSONResponse(result.model_dump(mode="json", exclude={"report_path"}))
    fmt = format_of_accept(accept)
    if fmt is not None and fmt != "md":
        return await export_response(services, principal, result, fmt)
    return PlainTextResponse(result.report, media_type="text/markdown; charset=utf-8")


async def written_report(services: Services, principal: Principal, run_id: str) -> ResearchResult:
    """The run's result once its report is written (the API's report route and the web app's report
    both read it here); 404 for another tenant's run, 409 before the report exists."""
    await owned(services, principal, run_id)
    state = await services.cairn.describe_status(run_id)
    if state == WorkflowExecutionStatus.RUNNING:
        status = await services.cairn.status(run_id)
        if status.phase not in ("done", "aborted"):
            raise Problem(
                409, f"run {run_id} is {status.phase}; its report is not written yet", code="conflict"
            )
        # The report is written and the run is closing (its last workflow task): wait for it.
    elif state != WorkflowExecutionStatus.COMPLETED:
        detail = f"run {run_id} ended without a report ({(state.name if state else 'unknown').lower()})"
        try:
            error = (await services.cairn.status(run_id)).error
        except CairnError:
            error = None
        raise Problem(409, f"{detail}: {error}" if error else detail, code="conflict")
    try:
        result: ResearchResult = await asyncio.wait_for(services.cairn.result(run_id), CLOSING_SECONDS)
    except TimeoutError:
        raise Problem(
            503, f"run {run_id} wrote its report but has not closed; try again", code="unavailable"
        ) from None
    return result


@runs.get("/runs/{run_id}/artifacts/{name:path}", summary="A file a coder step made (a chart, a table)")
async def artifact(run_id: str, name: str, principal: Reader, services: Svc) -> FileResponse:
    """`name` as the report links it: `<step>/<file>` or a file name the run's steps made."""
    from activities.sandbox.artifacts import artifact_path

    await owned(services, principal, run_id)
    root = services.sandbox_artifacts_root()
    path = await asyncio.to_thread(artifact_path, root, principal.tenant, run_id, name)
    if path is None:
        raise Problem(404, f"run {run_id} has no artifact named {name[:100]!r}", code="not_found")
    return FileResponse(path, filename=path.name, content_disposition_type="attachment")


@runs.get(
    "/runs/{run_id}/events",
    summary="Server-Sent Events of the run",
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "nothing after Last-Event-ID"},
    },
)
async def events(
    run_id: str,
    principal: Reader,
    services: Svc,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, description="same as Last-Event-ID")] = None,
) -> Response:
    """Phase changes, plan versions, steps started and finished, tool calls, spend, and the run's end
    (`done`, `aborted` or `failed`). Each event's id is its place in the run's durable stream: send
    the last one you read as Last-Event-ID to resume exactly after it, from any API process."""
    await owned(services, principal, run_id)
    return event_stream(services, run_id, last_event_id, after)


def event_stream(services: Services, run_id: str, last_event_id: str | None, after: int | None) -> Response:
    """The run's events after `last_event_id` (or `after`) as Server-Sent Events; the caller has
    checked the run's tenant (the API's route and the web app's both call `owned` first)."""
    resume = after if after is not None else 0
    if last_event_id is not None:
        if not last_event_id.strip().isdigit() or len(last_event_id) > 18:
            raise Problem(422, "Last-Event-ID must be an event id this stream sent", code="invalid")
        resume = int(last_event_id)
    feed = services.feeds.feed(run_id)
    if feed.ended and feed.events and resume >= feed.events[-1].sse_id:
        return Response(status_code=204)  # Tells an EventSource not to reconnect.

    async def stream() -> Any:
        async for event in feed.read(resume):
            yield ServerSentEvent(data=event.data, event=event.type, id=str(event.sse_id))

    return EventSourceResponse(stream(), ping=services.config.keepalive_seconds, send_timeout=30)


# -- documents -----------------------------------------------------------------------------------

documents = APIRouter(tags=["documents"])


class DocumentList(BaseModel):
    documents: list[DocumentEntry]


@documents.post("/documents", status_code=201, response_model=IngestReport, summary="Add a document")
async def upload(
    principal: Writer,
    services: Svc,
    file: Annotated[UploadFile, File(description="a .txt, .md, .html or .pdf document")],
    name: Annotated[str | None, Form(max_length=255)] = None,
) -> IngestReport:
    """The document joins the tenant's corpus, where its runs' researchers search it."""
    from activities.corpus.uploads import UploadRefused, ingest_upload

    data = await file.read(services.config.max_upload_bytes + 1)
    if len(data) > services.config.max_upload_bytes:
        raise Problem(413, f"the document is larger than {services.config.max_upload_bytes:,} bytes")
    filename = name or file.filename or ""
    try:
        report = await ingest_upload(
            await services.corpus(),
            principal.tenant,
            filename,
            data,
            max_bytes=services.config.max_upload_bytes,
        )
    except UploadRefused as err:
        status = 413 if err.reason == "too_large" else 422
        raise Problem(status, str(err), code="document_refused") from None
    if report.error is not None:
        raise Problem(422, report.error, code="document_refused")
    return report


@documents.get("/documents", response_model=DocumentList, summary="The tenant's documents")
async def list_documents(principal: Reader, services: Svc) -> DocumentList:
    from common.tenancy import corpus_scope

    corpus = await services.corpus()
    return DocumentList(documents=await corpus.list_documents(corpus_scope(principal.tenant)))


@documents.get(
    "/documents/text", response_model=StoredDocument, summary="One of the tenant's documents, as stored"
)
async def read_document(
    principal: Reader,
    services: Svc,
    path: Annotated[
        str, Query(min_length=1, max_length=4096, description="the path `GET /v1/documents` lists")
    ],
) -> StoredDocument:
    """The document's passages in order: what a run's researcher searched and cited. A path the
    tenant's corpus does not hold (another tenant's among them) is a 404."""
    from common.tenancy import corpus_scope

    stored = await (await services.corpus()).read_document(corpus_scope(principal.tenant), path)
    if stored is None:
        raise Problem(404, "no such document in your corpus", code="not_found")
    return stored


# -- API keys ------------------------------------------------------------------------------------

keys = APIRouter(tags=["keys"])


class NewKey(_Body):
    role: Role
    name: str = Field(default="", max_length=100)


class KeyView(BaseModel):
    id: str
    tenant: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class CreatedKey(KeyView):
    key: str = Field(description="the key itself: shown this once, never again")


class KeyList(BaseModel):
    keys: list[KeyView]


@keys.post("/keys", status_code=201, response_model=CreatedKey, summary="A new API key of the tenant")
async def create_key(body: NewKey, principal: Admin, services: Svc) -> CreatedKey:
    try:
        secret, record = await services.keys.create(principal.tenant, body.role, body.name)
    except ValueError as err:
        raise Problem(422, str(err), code="invalid") from None
    return CreatedKey(**vars(record), key=secret)


@keys.get("/keys", response_model=KeyList, summary="The tenant's API keys (never their secrets)")
async def list_keys(principal: Admin, services: Svc) -> KeyList:
    return KeyList(keys=[KeyView(**vars(k)) for k in await services.keys.list(principal.tenant)])


@keys.delete("/keys/{key_id}", status_code=204, summary="Revoke one of the tenant's keys")
async def revoke_key(key_id: str, principal: Admin, services: Svc) -> Response:
    if not await services.keys.revoke(key_id, tenant=principal.tenant):
        raise Problem(404, f"no active key with id {key_id[:40]}", code="not_found")
    return Response(status_code=204)

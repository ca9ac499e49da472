"""Every error the API answers, as `application/problem+json` (RFC 9457) with a `detail` for a person.

Routes raise `Problem`; CairnError from the client layer maps to a status by its kind; FastAPI's own
validation errors and Starlette's 404/405 are rewritten into the same shape, so a caller parses one
kind of error body whatever went wrong.

Must never: put a credential, a stack trace or an internal path into an answer; answer another tenant's
run differently from a run that does not exist (both are `not_found` with the same detail).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from client.api import CairnError

PROBLEM_JSON = "application/problem+json"
_KIND_STATUS = {"invalid": 422, "not_found": 404, "conflict": 409, "unavailable": 503, "refused": 400}


class Problem(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or HTTPStatus(status).phrase.lower().replace(" ", "_")
        self.headers = dict(headers or {})
        self.extra = extra


def not_found(run_id: str) -> Problem:
    """The one answer for a run that does not exist and for another tenant's run."""
    return Problem(404, f"no run with id {run_id}", code="not_found")


def problem_response(problem: Problem) -> JSONResponse:
    body = {
        "type": f"https://cairn.dev/problems/{problem.code}",
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    }
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON)


def from_cairn_error(err: CairnError) -> Problem:
    status = _KIND_STATUS.get(err.kind, 400)
    return Problem(status, str(err), code=err.kind if err.kind != "refused" else "bad_request")


def _validation_detail(err: RequestValidationError) -> str:
    parts = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_cairn_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CairnError)
        return problem_response(from_cairn_error(exc))

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(Problem(422, _validation_detail(exc), code="invalid"))

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(Problem(exc.status_code, detail, headers=exc.headers))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(CairnError, on_cairn_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)

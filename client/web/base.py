"""What every page of the web app shares: templates, who is signed in, CSRF, cookies, error pages.

Every page goes through `signed_in` (a live server-side session, client/server/sessions.py, whose
principal is checked for the action with the API's own `allows`), and every request that changes
anything through `checked_form` (the session's CSRF token from a hidden field, compared in constant
time, and an Origin header, when the browser sends one, that is this server's). Templates autoescape
everything; the only markup inserted unescaped is the report, sanitised by client/web/render.py.

Must never: act on a POST without its CSRF token, act for a viewer, show another tenant's run (the
error page for a run says only "no run with id …", as the API does), or put a session token, key or
bearer token in a page or a log.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import FormData

from client.api import CairnError
from client.server.app import Services, secure_request, services_of
from client.server.auth import Action, allows
from client.server.problems import Problem, from_cairn_error, problem_response
from client.server.sessions import Session, cookie_name
from client.web.render import source_href

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.autoescape = True
templates.env.globals["source_href"] = source_href
LOGIN_COOKIE: Final = "cairn_oidc_state"
_API_PREFIXES: Final = ("/v1/", "/healthz", "/readyz", "/openapi.json", "/docs")
_REFUSALS: Final = {
    "write": "Your role ({role}) may read this tenant's runs but not change them.",
    "admin": "Your role ({role}) may not do this.",
}


class SignInNeeded(Exception):
    """No live session: the person is sent to the sign-in page, and back to `next_path` after."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def local_path(value: str | None, default: str = "/runs") -> str:
    """`value` if it is a path on this site (never `//host` or a scheme), else `default`: where to go
    after signing in must not be a door to another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


async def signed_in(request: Request, action: Action = "read") -> Session:
    services = services_of(request)
    session = await services.session_of(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInNeeded(target)
    request.state.web_session = session  # For the page's header, error pages included.
    if not allows(session.principal.role, action):
        detail = _REFUSALS.get(action, "Your role may not do this.").format(role=session.principal.role)
        raise Problem(403, detail, code="forbidden")
    return session


def same_origin(request: Request) -> bool:
    """A browser names the page a POST came from in Origin; when it does, it must be this site."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # Older browsers omit it on same-origin POSTs; the CSRF token still decides.
    own = f"{request.url.scheme}://{request.url.netloc}"
    return origin == own


async def checked_form(request: Request, session: Session) -> FormData:
    """The POSTed form, once its CSRF token is the session's and its origin is ours; 403 otherwise."""
    form = await request.form()
    token = form.get("csrf")
    if not same_origin(request) or not isinstance(token, str) or not session.csrf_ok(token):
        raise Problem(403, "This form has expired or did not come from this site; reload and try again.")
    return form


def pre_session_csrf_ok(request: Request, form: FormData) -> bool:
    """The sign-in form's token (double submit: the same random value in a cookie and the form), so a
    page elsewhere cannot sign a browser in as someone else."""
    cookie = request.cookies.get("cairn_csrf", "")
    token = form.get("csrf")
    return (
        same_origin(request)
        and bool(cookie)
        and isinstance(token, str)
        and hmac.compare_digest(cookie, token)
    )


def set_cookie(response: Response, request: Request, name: str, value: str, **options: Any) -> None:
    services = services_of(request)
    secure = secure_request(request, services.config)
    options.setdefault("samesite", "strict")
    options.setdefault("path", "/")
    response.set_cookie(name, value, httponly=True, secure=secure, **options)


def set_session_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    secure = secure_request(request, services_of(request).config)
    set_cookie(response, request, cookie_name(secure), token, max_age=max_age)


def clear_session_cookie(response: Response, request: Request) -> None:
    secure = secure_request(request, services_of(request).config)
    response.delete_cookie(cookie_name(secure), path="/", secure=secure, httponly=True, samesite="strict")


def session_token(request: Request) -> str | None:
    secure = secure_request(request, services_of(request).config)
    return request.cookies.get(cookie_name(secure))


def page(
    request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context or {}, status_code=status)


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def services(request: Request) -> Services:
    return services_of(request)


def _web(request: Request) -> bool:
    return not request.url.path.startswith(_API_PREFIXES)


def error_page(request: Request, problem: Problem) -> Response:
    session = getattr(request.state, "web_session", None)
    return page(
        request,
        "error.html",
        {"status": problem.status, "detail": problem.detail, "session": session},
        status=problem.status,
    )


def install_errors(app: FastAPI) -> None:
    """Problems on the web app's pages are pages; on the API they stay problem+json."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return error_page(request, exc) if _web(request) else problem_response(exc)

    async def on_cairn_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CairnError)
        problem = from_cairn_error(exc)
        return error_page(request, problem) if _web(request) else problem_response(problem)

    async def on_sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInNeeded)
        if request.headers.get("accept", "").startswith("text/event-stream"):
            return JSONResponse({"detail": "signed out"}, status_code=401)
        return see_other("/signin?next=" + quote(exc.next_path, safe="/"))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(CairnError, on_cairn_error)
    app.add_exception_handler(SignInNeeded, on_sign_in)


def reasons(err: ValidationError) -> str:
    """A validation error's reasons for a person, in one line (pydantic's "Value error, " dropped)."""
    return "; ".join(str(e.get("msg", "invalid")).removeprefix("Value error, ") for e in err.errors())

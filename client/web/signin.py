"""Signing in and out of the web app: an API key exchanged for a session, or the OIDC code flow.

The key is checked by the API's own Authenticator (the same hash lookup a bearer key gets), failed
attempts count against the address's limit of failed authentications, and the key itself is never
stored in the browser or the session: the session row keeps the key's id, so revoking the key ends
the session. Signing out deletes the session row, not just the cookie.

Must never: echo a presented key or token into a page or a log; sign a browser in from a form that
came from another site (the sign-in form has its own double-submit CSRF token); redirect after sign-in
anywhere but a path on this site.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from client.server.auth import AuthError, AuthUnavailable, Principal
from client.server.db import DatabaseUnavailable
from client.server.problems import Problem
from client.web.base import (
    LOGIN_COOKIE,
    checked_form,
    clear_session_cookie,
    local_path,
    page,
    pre_session_csrf_ok,
    see_other,
    services,
    session_token,
    set_cookie,
    set_session_cookie,
    signed_in,
)
from client.web.oidc import CALLBACK_PATH, CodeFlow, SignInFailed

router = APIRouter(include_in_schema=False)


def _flow(request: Request) -> CodeFlow | None:
    return CodeFlow.from_env(services(request).config.env)


def _sign_in_page(request: Request, next_path: str, error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = page(
        request,
        "signin.html",
        {"csrf": token, "next": next_path, "error": error, "oidc": _flow(request) is not None},
        status=status,
    )
    set_cookie(response, request, "cairn_csrf", token, max_age=3600)
    return response


@router.get("/")
async def home() -> Response:
    return see_other("/runs")


@router.get("/signin")
async def sign_in_form(
    request: Request, next: Annotated[str | None, Query(max_length=2000)] = None
) -> Response:
    return _sign_in_page(request, local_path(next))


async def _start_session(request: Request, principal: Principal, next_path: str) -> Response:
    store = services(request).sessions
    await store.sweep()
    token, _ = await store.create(principal)
    response = see_other(next_path)
    set_session_cookie(response, request, token, int(store.lifetime.total_seconds()))
    response.delete_cookie("cairn_csrf", path="/")
    return response


@router.post("/signin")
async def sign_in(request: Request) -> Response:
    form = await request.form()
    next_path = local_path(str(form.get("next") or ""))
    if not pre_session_csrf_ok(request, form):
        return _sign_in_page(request, next_path, "The sign-in form expired; please try again.", 403)
    key = str(form.get("api_key") or "").strip()
    svc = services(request)
    try:
        if not key.startswith("cairn_"):
            raise AuthError("not an API key")
        principal = await svc.auth.authenticate(f"Bearer {key}")
    except AuthError:
        address = request.client.host if request.client else "unknown"
        svc.limiter.failed_auth(address)
        return _sign_in_page(request, next_path, "That API key is unknown or revoked.", 401)
    except (AuthUnavailable, DatabaseUnavailable) as err:
        raise Problem(503, f"cannot check credentials now: {err}", code="unavailable") from None
    return await _start_session(request, principal, next_path)


@router.post("/signout")
async def sign_out(request: Request) -> Response:
    session = await signed_in(request)
    await checked_form(request, session)
    await services(request).sessions.end(session_token(request))
    response = see_other("/signin")
    clear_session_cookie(response, request)
    return response


@router.get("/auth/oidc")
async def oidc_start(
    request: Request, next: Annotated[str | None, Query(max_length=2000)] = None
) -> Response:
    flow = _flow(request)
    if flow is None:
        raise Problem(404, "Signing in with an identity provider is not configured here.")
    try:
        endpoints = await flow.endpoints()
    except SignInFailed as err:
        return _sign_in_page(request, local_path(next), f"Cannot sign in with the provider: {err}", 503)
    state, verifier = flow.new_login()
    store = services(request).sessions
    await store.sweep()  # Sign-ins nobody finished are kept 10 minutes at most.
    await store.begin_login(state, verifier, local_path(next))
    response = see_other(
        flow.authorization_url(endpoints, flow.redirect_uri(str(request.base_url)), state, verifier)
    )
    # Lax, not Strict: it must come back with the provider's top-level redirect to the callback.
    set_cookie(response, request, LOGIN_COOKIE, state, max_age=600, samesite="lax", path=CALLBACK_PATH)
    return response


@router.get(CALLBACK_PATH)
async def oidc_callback(
    request: Request,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=200)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    flow = _flow(request)
    if flow is None:
        raise Problem(404, "Signing in with an identity provider is not configured here.")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if error or not code or not state or not expected or not secrets.compare_digest(expected, state):
        reason = f"the provider said: {error}" if error else "this sign-in was not started in this browser"
        return _sign_in_page(request, "/runs", f"Sign-in failed: {reason}.", 400)
    svc = services(request)
    pending = await svc.sessions.take_login(state)
    if pending is None:
        return _sign_in_page(request, "/runs", "Sign-in failed: it expired or was already used.", 400)
    try:
        token = await flow.exchange(code, pending.verifier, flow.redirect_uri(str(request.base_url)))
        principal = await svc.auth.authenticate(f"Bearer {token}")
    except SignInFailed as err:
        return _sign_in_page(request, pending.next_path, f"Sign-in failed: {err}.", 502)
    except AuthError as err:
        return _sign_in_page(
            request, pending.next_path, f"Sign-in failed: the token was refused ({err}).", 401
        )
    except AuthUnavailable as err:
        return _sign_in_page(request, pending.next_path, f"Sign-in failed: {err}.", 503)
    store = svc.sessions
    await store.sweep()
    session_id, _ = await store.create(principal)
    # A page, not a redirect: the browser arrived here from the provider's site, so a SameSite=Strict
    # cookie set now would not go with a redirect in the same chain; a navigation this page starts
    # is same-site, and carries it.
    response = page(request, "signed_in.html", {"next": pending.next_path})
    set_session_cookie(response, request, session_id, int(store.lifetime.total_seconds()))
    response.delete_cookie(LOGIN_COOKIE, path=CALLBACK_PATH)
    return response

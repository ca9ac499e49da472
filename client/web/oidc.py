"""Signing in to the web app with the OpenID Connect provider: the authorization code flow with PKCE.

Why this exists: people of an organisation with an identity provider should not need an API key. The
web app is a public client (a client secret is used when one is configured): it sends the browser to
the provider's authorization endpoint with a random `state` and an S256 code challenge, and on the way
back exchanges the code, with the verifier only this server knows, for tokens at the token endpoint.
The access token is then checked by the API's own Authenticator, exactly as a bearer token on `/v1`
would be (issuer, audience, asymmetric signature, expiry, tenant and role claims), and a session is
made for the principal it names.

Configuration: CAIRN_OIDC_ISSUER and CAIRN_OIDC_AUDIENCE (as for bearer tokens) and
CAIRN_OIDC_CLIENT_ID; optionally CAIRN_OIDC_CLIENT_SECRET, CAIRN_OIDC_SCOPES (default `openid`) and
CAIRN_PUBLIC_URL (the address people use, for the redirect URI; else the request's own).

Must never: accept a callback whose `state` this browser was not given (login CSRF), exchange a code
twice, follow an endpoint that is not https (plain http on loopback only), or log a code or a token.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from client.server.auth import HTTP_TIMEOUT_SECONDS, OIDCConfig, _secure_url
from common.env import ConfigError

CALLBACK_PATH = "/auth/callback"


class SignInFailed(Exception):
    """The provider's answer cannot make a session; the message is for the person signing in."""


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str


@dataclass(frozen=True)
class CodeFlow:
    issuer: str
    client_id: str
    client_secret: str | None
    scopes: str
    public_url: str | None

    @staticmethod
    def from_env(env: Mapping[str, str]) -> CodeFlow | None:
        """None unless OIDC is configured for bearer tokens and a client id is given."""
        client_id = (env.get("CAIRN_OIDC_CLIENT_ID") or "").strip()
        oidc = OIDCConfig.from_env(env)
        if oidc is None or not client_id:
            return None
        public = (env.get("CAIRN_PUBLIC_URL") or "").strip().rstrip("/") or None
        if public is not None:
            _secure_url("CAIRN_PUBLIC_URL", public)
        return CodeFlow(
            issuer=oidc.issuer,
            client_id=client_id,
            client_secret=(env.get("CAIRN_OIDC_CLIENT_SECRET") or "").strip() or None,
            scopes=(env.get("CAIRN_OIDC_SCOPES") or "").strip() or "openid",
            public_url=public,
        )

    def redirect_uri(self, base_url: str) -> str:
        return (self.public_url or base_url.rstrip("/")) + CALLBACK_PATH

    async def endpoints(self) -> Endpoints:
        """The provider's endpoints, from its discovery document (read on each sign-in: rare)."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False) as http:
                answer = await http.get(url, headers={"Accept": "application/json"})
            answer.raise_for_status()
            document = answer.json()
        except (httpx.HTTPError, ValueError) as err:
            raise SignInFailed(f"the identity provider did not answer ({type(err).__name__})") from None
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise SignInFailed("the identity provider's discovery document names another issuer")
        try:
            return Endpoints(
                authorization=_secure_url("authorization_endpoint", str(document["authorization_endpoint"])),
                token=_secure_url("token_endpoint", str(document["token_endpoint"])),
            )
        except (KeyError, ConfigError) as err:
            raise SignInFailed(f"the identity provider's endpoints are unusable: {err}") from None

    @staticmethod
    def new_login() -> tuple[str, str]:
        """A fresh `state` and PKCE code verifier (RFC 7636: 43 to 128 characters)."""
        return secrets.token_urlsafe(32), secrets.token_urlsafe(64)

    def authorization_url(self, endpoints: Endpoints, redirect_uri: str, state: str, verifier: str) -> str:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.scopes,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        separator = "&" if "?" in endpoints.authorization else "?"
        return endpoints.authorization + separator + urlencode(query)

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> str:
        """The access token the provider gives for `code`; SignInFailed with its reason if none."""
        endpoints = await self.endpoints()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "code_verifier": verifier,
        }
        auth = httpx.BasicAuth(self.client_id, self.client_secret) if self.client_secret else None
        try:
            async with httpx.AsyncClient(
                timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False, auth=auth
            ) as http:
                answer = await http.post(endpoints.token, data=form)
            body: Any = answer.json()
        except (httpx.HTTPError, ValueError) as err:
            raise SignInFailed(
                f"the identity provider's token endpoint failed ({type(err).__name__})"
            ) from None
        if answer.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise SignInFailed(
                f"the identity provider refused the code ({str(error or answer.status_code)[:80]})"
            )
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise SignInFailed("the identity provider gave no access token")
        return token

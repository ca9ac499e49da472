"""Who is calling the API, for which tenant, and what their role allows: one answer per request.

A request carries `Authorization: Bearer <credential>`. A credential that starts with `cairn_` is an API
key (client/server/keys.py); anything else is a JWT from the operator's OpenID Connect issuer, when one
is configured (CAIRN_OIDC_ISSUER and CAIRN_OIDC_AUDIENCE), and is verified here with PyJWT against the
issuer's published keys. Either way the result is a Principal: the tenant comes from the key's record or
from a signed claim, never from the request itself.

Must never: accept an unsigned or symmetrically signed token (`none`, HS*: the issuer's public key is
public), take an issuer's word over plain http except on loopback, put a presented key or token in an
error or a log line, or let a flood of tokens naming unknown key ids make us fetch the issuer's keys
more than once per CAIRN_OIDC_JWKS_REFRESH_SECONDS.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from client.server.keys import KEY_PREFIX, ROLES, KeyStore, Role
from common.env import ConfigError, number, positive
from common.tenancy import valid_tenant

__all__ = [
    "ROLES",
    "AuthError",
    "AuthUnavailable",
    "Authenticator",
    "OIDCConfig",
    "Principal",
    "Role",
    "allows",
]

Action = Literal["read", "write", "admin"]
# viewer: read runs and reports. member: also start and steer runs (approve, revise, edit, skip, add a
# step, raise a budget, abort) and upload documents. admin: also manage the tenant's keys.
_GRANTS: Final[Mapping[str, frozenset[str]]] = {
    "viewer": frozenset({"read"}),
    "member": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}
# Asymmetric signatures only: with HS*, anyone holding the issuer's public key could sign.
ALGORITHMS: Final = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
_EC_CURVES: Final = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
LEEWAY_SECONDS: Final = 30  # Clock skew between the issuer and us, for exp, nbf and iat.
MAX_CREDENTIAL_CHARS: Final = 16_384  # Far above any real token; parsing more is work for nothing.
HTTP_TIMEOUT_SECONDS: Final = 5.0
JWKS_CACHE_SECONDS: Final = 300  # The issuer's keys are fetched again this often, rotated or not.
RETRY_ISSUER_SECONDS: Final = 5.0  # After the issuer failed to answer, requests fail fast this long.
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})


def allows(role: Role, action: Action) -> bool:
    return action in _GRANTS.get(role, frozenset())


@dataclass(frozen=True)
class Principal:
    """Who made a request. `subject` names them in logs: a key's id, or the token's `sub`."""

    tenant: str
    role: Role
    subject: str
    via: Literal["key", "oidc"]
    key_id: str | None = None


class AuthError(Exception):
    """The request's credentials are missing or refused (401); the message says why, for a person."""


class AuthUnavailable(Exception):
    """The credentials cannot be checked now: the identity provider does not answer (503)."""


def _secure_url(name: str, url: str) -> str:
    """`url` if it is https, or http on a loopback host (tests, local development); else ConfigError."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return url
    raise ConfigError(
        f"{name}={url[:200]!r} must be an https URL (plain http only on 127.0.0.1, ::1, localhost)"
    )


@dataclass(frozen=True)
class OIDCConfig:
    issuer: str
    audience: str
    tenant_claim: str = "cairn_tenant"
    role_claim: str = "cairn_role"
    jwks_refresh_seconds: float = 30.0

    @staticmethod
    def from_env(env: Mapping[str, str]) -> OIDCConfig | None:
        """None when OIDC is not configured; ConfigError when it half is, or the issuer is not secure."""
        issuer = (env.get("CAIRN_OIDC_ISSUER") or "").strip()
        audience = (env.get("CAIRN_OIDC_AUDIENCE") or "").strip()
        if not issuer and not audience:
            return None
        if not issuer or not audience:
            missing = "CAIRN_OIDC_AUDIENCE" if issuer else "CAIRN_OIDC_ISSUER"
            raise ConfigError(
                f"{missing} is not set: OIDC needs both CAIRN_OIDC_ISSUER and CAIRN_OIDC_AUDIENCE"
            )
        refresh = number(env, "CAIRN_OIDC_JWKS_REFRESH_SECONDS", OIDCConfig.jwks_refresh_seconds)
        positive("CAIRN_OIDC_JWKS_REFRESH_SECONDS", refresh)
        return OIDCConfig(
            issuer=_secure_url("CAIRN_OIDC_ISSUER", issuer),
            audience=audience,
            tenant_claim=(env.get("CAIRN_OIDC_TENANT_CLAIM") or "").strip() or OIDCConfig.tenant_claim,
            role_claim=(env.get("CAIRN_OIDC_ROLE_CLAIM") or "").strip() or OIDCConfig.role_claim,
            jwks_refresh_seconds=refresh,
        )


def _fits(key: Any, alg: str) -> bool:
    """Whether the issuer's key can make `alg` signatures. A JWK need not name its algorithm, so an RSA
    key serves RS* and PS*, an EC key the ES* of its curve, an Edwards key EdDSA."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[alg]
    return alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)


def _refusal(err: jwt.PyJWTError, config: OIDCConfig) -> str:
    """PyJWT's verdict in words for a person; its own messages never include the token."""
    if isinstance(err, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(err, jwt.ImmatureSignatureError):
        return "token is not valid yet (nbf or iat is in the future)"
    if isinstance(err, jwt.InvalidIssuerError):
        return f"token issuer is not {config.issuer}"
    if isinstance(err, jwt.InvalidAudienceError):
        return f"token audience is not {config.audience}"
    if isinstance(err, jwt.MissingRequiredClaimError):
        return f"token has no '{err.claim}' claim"
    if isinstance(err, jwt.InvalidSignatureError):
        return "token signature invalid"
    if isinstance(err, jwt.DecodeError):
        return "token is malformed"
    return f"token refused: {err}"


class OIDCVerifier:
    """Tokens from one issuer. Its keys come from the `jwks_uri` of its discovery document through
    PyJWKClient, which caches them and, for an unknown key id, fetches them again at most once per
    `jwks_refresh_seconds`. PyJWKClient blocks (urllib), so it runs on a thread of its own: a slow
    issuer holds up token checks, never the event loop or the threads that SQLite calls use."""

    def __init__(self, config: OIDCConfig) -> None:
        self.config = config
        self._jwks: jwt.PyJWKClient | None = None
        self._discovery = asyncio.Lock()
        self._failed_until = 0.0  # monotonic; while in the future, the issuer is not asked again
        self._failure = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-jwks")

    def _unavailable(self, reason: str) -> AuthUnavailable:
        self._failure = f"the OIDC issuer {self.config.issuer} cannot be used now: {reason}"
        self._failed_until = time.monotonic() + RETRY_ISSUER_SECONDS
        return AuthUnavailable(self._failure)

    def _fail_fast(self) -> None:
        if time.monotonic() < self._failed_until:
            raise AuthUnavailable(self._failure)

    async def _keys(self) -> jwt.PyJWKClient:
        """The JWKS client, after discovering the issuer's `jwks_uri` once per process."""
        if self._jwks is not None:
            return self._jwks
        async with self._discovery:
            if self._jwks is not None:
                return self._jwks
            self._fail_fast()
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False) as http:
                    answer = await http.get(url, headers={"Accept": "application/json"})
                answer.raise_for_status()
                document = answer.json()
            except (httpx.HTTPError, ValueError) as err:
                raise self._unavailable(f"discovery at {url} failed: {type(err).__name__}: {err}") from None
            if not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
                # OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer we asked.
                raise self._unavailable(f"the discovery document at {url} names another issuer")
            jwks_uri = document.get("jwks_uri")
            try:
                if not isinstance(jwks_uri, str):
                    raise ConfigError("no jwks_uri")
                _secure_url("jwks_uri", jwks_uri)
            except ConfigError as err:
                raise self._unavailable(
                    f"the discovery document at {url} has an unusable jwks_uri: {err}"
                ) from None
            self._jwks = jwt.PyJWKClient(
                jwks_uri,
                cache_jwk_set=True,
                lifespan=JWKS_CACHE_SECONDS,
                timeout=HTTP_TIMEOUT_SECONDS,
                cooldown_duration=self.config.jwks_refresh_seconds,
            )
            return self._jwks

    async def _signing_key(self, kid: str) -> Any:
        """The issuer's public key named `kid`: from the cached key set without leaving the event loop,
        else from PyJWKClient on the JWKS thread, which fetches the set again if its cooldown allows."""
        client = await self._keys()
        cached = client.jwk_set_cache.get() if client.jwk_set_cache is not None else None
        for jwk in cached.keys if cached is not None else ():
            if jwk.key_id == kid and jwk.public_key_use in ("sig", None):
                return jwk.key
        self._fail_fast()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._fetch_key, client, kid)

    def _fetch_key(self, client: jwt.PyJWKClient, kid: str) -> Any:
        """On the JWKS thread. Requests queued behind a failed fetch fail at once instead of each asking
        the issuer again (PyJWKClient's cooldown counts successful fetches only)."""
        self._fail_fast()
        try:
            return client.get_signing_key(kid).key
        except jwt.PyJWKClientConnectionError as err:
            raise self._unavailable(f"its keys could not be fetched: {err}") from None
        except jwt.PyJWKClientError:
            raise AuthError("token key id (kid) is not among the issuer's keys") from None
        except jwt.PyJWKSetError as err:
            raise self._unavailable(f"its key set is unusable: {err}") from None

    async def verify(self, token: str) -> Principal:
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("bearer token is neither a Cairn API key nor a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            shown = str(alg)[:20]
            raise AuthError(f"token algorithm {shown!r} is not accepted (only asymmetric signatures are)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise AuthError("token has no key id (kid)")
        key = await self._signing_key(kid)
        if not _fits(key, alg):
            raise AuthError(f"token algorithm {alg} does not fit the issuer's key it names")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=config.audience,
                issuer=config.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as err:
            raise AuthError(_refusal(err, config)) from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        config = self.config
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise AuthError("token's 'sub' claim is not a usable subject")
        try:
            tenant = valid_tenant(claims.get(config.tenant_claim))  # type: ignore[arg-type]  # It checks.
        except ValueError:
            raise AuthError(f"token has no valid '{config.tenant_claim}' claim (a tenant id)") from None
        role = claims.get(config.role_claim, "viewer")  # No role: the least privilege.
        if role not in ROLES:
            raise AuthError(f"token's '{config.role_claim}' claim is not one of {', '.join(ROLES)}")
        return Principal(tenant=tenant, role=role, subject=subject, via="oidc")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Authenticator:
    """Turns an Authorization header into a Principal, or an AuthError that says why not."""

    def __init__(self, keys: KeyStore, oidc: OIDCConfig | None = None) -> None:
        self.keys = keys
        self.oidc = OIDCVerifier(oidc) if oidc is not None else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None, keys: KeyStore) -> Authenticator:
        return cls(keys, OIDCConfig.from_env(os.environ if env is None else env))

    async def authenticate(self, authorization: str | None) -> Principal:
        """AuthError for missing or refused credentials; AuthUnavailable or DatabaseUnavailable when they
        cannot be checked now."""
        if not authorization or not authorization.strip():
            raise AuthError("missing bearer credentials")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError("the Authorization header must be 'Bearer <API key or token>'")
        if len(credential) > MAX_CREDENTIAL_CHARS:
            raise AuthError("bearer credentials are too long")
        if credential.startswith(KEY_PREFIX):
            key = await self.keys.verify(credential)
            if key is None:
                raise AuthError("unknown or revoked API key")
            return Principal(tenant=key.tenant, role=key.role, subject=key.id, via="key", key_id=key.id)
        if self.oidc is None:
            raise AuthError("bearer credentials are not a Cairn API key, and no OIDC issuer is configured")
        return await self.oidc.verify(credential)

    async def close(self) -> None:
        """Stop the JWKS thread; the key store is its owner's to close."""
        if self.oidc is not None:
            self.oidc.close()

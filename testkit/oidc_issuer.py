"""An OpenID Connect issuer on loopback, for tests of bearer tokens and of the web app's sign-in: a
discovery document and a JWKS that a test can rotate or take down, and an authorization endpoint and a
token endpoint for the authorization code flow with PKCE, counting every request it answers.

Why this exists: OIDC verification (discovery, key fetches, refresh on an unknown key id, refusal of
forged tokens) and the web app's code flow only mean something against a real HTTP provider, both for
the authenticator itself and for `cairn serve` as a whole. The authorization endpoint signs in the
person `sign_in_as` names at once (a provider whose user has already consented), redirecting the
browser back with a one-time code; the token endpoint gives tokens for that code only to the client
that asked for it, at the same redirect URI, with the verifier of its S256 challenge, once.

Must never: listen beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from testkit.dev_server import free_port

AUDIENCE = "cairn-api"


class Issuer:
    """An OpenID Connect issuer on loopback: a discovery document and a JWKS that tests can rotate,
    counting every request it answers."""

    def __init__(self) -> None:
        self.jwks: list[dict[str, Any]] = []
        self.requests: Counter[str] = Counter()
        self.failing = False
        self.claims_issuer: str | None = None
        # The code flow: who signs in (claims for their tokens) and with which key the tokens are signed.
        self.signer: tuple[Any, str] | None = None
        self.person: dict[str, Any] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.exchanges: list[dict[str, str]] = []  # every token request's form, as received
        self._lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with issuer._lock:
                    issuer.requests[path] += 1
                    keys = list(issuer.jwks)
                if issuer.failing:
                    self._send(500, {"error": "down"})
                elif path == "/.well-known/openid-configuration":
                    claimed = issuer.claims_issuer or issuer.url
                    self._send(
                        200,
                        {
                            "issuer": claimed,
                            "jwks_uri": f"{issuer.url}/jwks",
                            "authorization_endpoint": f"{issuer.url}/authorize",
                            "token_endpoint": f"{issuer.url}/token",
                            "code_challenge_methods_supported": ["S256"],
                        },
                    )
                elif path == "/jwks":
                    self._send(200, {"keys": keys})
                elif path == "/authorize":
                    self._authorize({k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})
                else:
                    self._send(404, {})

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                with issuer._lock:
                    issuer.requests[path] += 1
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if path != "/token":
                    self._send(404, {})
                    return
                with issuer._lock:
                    issuer.exchanges.append(form)
                    grant = issuer.codes.pop(form.get("code", ""), None)  # A code is good once.
                status, body = issuer.exchange(form, grant)
                self._send(status, body)

            def _authorize(self, query: dict[str, str]) -> None:
                redirect = query.get("redirect_uri", "")
                if (
                    query.get("response_type") != "code"
                    or not query.get("client_id")
                    or query.get("code_challenge_method") != "S256"
                    or not query.get("code_challenge")
                    or not redirect.startswith("http://127.0.0.1:")
                    or issuer.signer is None
                ):
                    self._send(400, {"error": "invalid_request"})
                    return
                code = secrets.token_urlsafe(24)
                with issuer._lock:
                    issuer.codes[code] = dict(query)
                back = {"code": code, "state": query.get("state", "")}
                self.send_response(302)
                self.send_header("Location", f"{redirect}?{urlencode(back)}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests count requests instead."""

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def jwks_fetches(self) -> int:
        return self.requests["/jwks"]

    def publish(self, kid: str, private_key: Any, alg: str | None = None) -> None:
        public = private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
        jwk.update({"kid": kid, "use": "sig"} | ({"alg": alg} if alg else {}))
        with self._lock:
            self.jwks.append(jwk)

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": "user-7", "iat": now, "exp": now + 300}
        claims |= {"cairn_tenant": "acme", "cairn_role": "member"}
        claims |= changes
        return {k: v for k, v in claims.items() if v is not None}  # None: leave the claim out.

    def token(self, key: Any, kid: str, alg: str = "RS256", **changes: Any) -> str:
        return jwt.encode(self.claims(**changes), key, algorithm=alg, headers={"kid": kid})

    def sign_in_as(self, key: Any, kid: str, **claims: Any) -> None:
        """The code flow signs in this person: their tokens carry `claims` and are signed by `key`."""
        self.signer = (key, kid)
        self.person = dict(claims)

    def exchange(self, form: dict[str, str], grant: dict[str, str] | None) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer (RFC 6749 section 4.1.3, RFC 7636 section 4.6)."""
        if form.get("grant_type") != "authorization_code" or grant is None or self.signer is None:
            return 400, {"error": "invalid_grant"}
        if form.get("client_id") != grant["client_id"] or form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        if not verifier or challenge != grant["code_challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        key, kid = self.signer
        access = self.token(key, kid, **self.person)
        identity = self.token(key, kid, **{**self.person, "aud": grant["client_id"]})
        return 200, {"access_token": access, "id_token": identity, "token_type": "Bearer", "expires_in": 300}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


KEYS: dict[str, Any] = {
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rogue": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": ec.generate_private_key(ec.SECP256R1()),
    "ed": ed25519.Ed25519PrivateKey.generate(),
}

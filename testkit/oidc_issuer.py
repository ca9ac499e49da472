"""An OpenID Connect issuer on loopback, for tests of bearer tokens: a discovery document and a JWKS
that a test can rotate or take down, counting every request it answers.

Why this exists: OIDC verification (discovery, key fetches, refresh on an unknown key id, refusal of
forged tokens) only means something against a real HTTP issuer, both for the authenticator itself and
for `cairn serve` as a whole.

Must never: listen beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
        self._lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with issuer._lock:
                    issuer.requests[self.path] += 1
                    keys = list(issuer.jwks)
                if issuer.failing:
                    self._send(500, {"error": "down"})
                elif self.path == "/.well-known/openid-configuration":
                    claimed = issuer.claims_issuer or issuer.url
                    self._send(200, {"issuer": claimed, "jwks_uri": f"{issuer.url}/jwks"})
                elif self.path == "/jwks":
                    self._send(200, {"keys": keys})
                else:
                    self._send(404, {})

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

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


KEYS: dict[str, Any] = {
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rogue": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": ec.generate_private_key(ec.SECP256R1()),
    "ed": ed25519.Ed25519PrivateKey.generate(),
}

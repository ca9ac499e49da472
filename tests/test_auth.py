"""API keys and bearer authentication, against the real stores (SQLite and PostgreSQL), the real `cairn
keys` command, and a real OpenID Connect issuer on loopback that publishes RSA, EC and Ed25519 keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from client.server.auth import Authenticator, AuthError, AuthUnavailable, OIDCConfig, allows
from client.server.db import DatabaseUnavailable, open_database
from client.server.keys import KEY_PATTERN, KeyStore
from common.env import ConfigError
from testkit.dev_server import free_port
from testkit.oidc_issuer import AUDIENCE, KEYS, Issuer
from tests.conftest import CAIRN, cli_env
from tests.helpers import run


def a_tenant() -> str:
    """Tests share the session's PostgreSQL: each works in a tenant of its own."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    env = {"CAIRN_HOME": str(tmp_path)}
    if request.param == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_dsn")
    keys = await KeyStore.open(env)
    assert keys.db.dialect == request.param
    yield keys
    await keys.close()


async def stored_text(keys: KeyStore, home: Path) -> str:
    """Everything the database holds, as text: the SQLite files byte for byte, or the PostgreSQL table."""
    if keys.db.dialect == "sqlite":
        return b"".join(p.read_bytes() for p in sorted(home.glob("api.db*"))).decode("latin-1")
    rows = await keys.db.fetchall("SELECT t::text FROM cairn_api_keys t")
    return "\n".join(r[0] for r in rows)


# --- The key store ------------------------------------------------------------------------------------


async def test_a_key_verifies_until_it_is_revoked(store: KeyStore) -> None:
    tenant = a_tenant()
    plaintext, key = await store.create(tenant, "member", "ci bot")
    assert KEY_PATTERN.match(plaintext) and plaintext.startswith(f"cairn_{key.id}_")
    assert (key.tenant, key.role, key.name, key.revoked_at) == (tenant, "member", "ci bot", None)
    verified = await store.verify(plaintext)
    assert verified is not None
    assert (verified.id, verified.tenant, verified.role) == (key.id, tenant, "member")

    other, _ = await store.create(tenant, "viewer")
    other_key = await store.verify(other)
    assert other_key is not None and other_key.role == "viewer"
    assert [k.id for k in await store.list(tenant)] == [key.id, other_key.id]
    assert key.id in {k.id for k in await store.list()}
    assert await store.list(a_tenant()) == []

    assert await store.revoke(key.id, tenant=a_tenant()) is False  # Another tenant's key: untouched.
    assert await store.verify(plaintext) is not None
    assert await store.revoke(key.id) is True
    assert await store.revoke(key.id) is False  # Already revoked.
    assert await store.verify(plaintext) is None
    assert await store.verify(other) is not None  # Revoking one key leaves the tenant's others.
    listed = {k.id: k for k in await store.list(tenant)}
    assert listed[key.id].revoked_at is not None and not listed[key.id].active
    assert await store.revoke("0123456789ab") is False and await store.revoke("not an id") is False


async def test_malformed_unknown_and_altered_keys_are_no_key(store: KeyStore) -> None:
    plaintext, key = await store.create(a_tenant(), "admin")
    secret = plaintext.removeprefix(f"cairn_{key.id}_")
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for presented in (
        "",
        "cairn_",
        plaintext[:-1],  # A secret one character short (still 42+ characters) is a different secret.
        f"cairn_{key.id}_{flipped}",
        plaintext + "x",
        f"cairn_0123456789ab_{secret}",  # Well-formed, unknown id, the right secret of another key.
        f"cairn_{key.id[:-1]}F_{secret}",  # Ids are lower-case.
        f"cairn_{key.id}-{secret}",
        f"Cairn_{key.id}_{secret}",
        f" {plaintext}",
        f"cairn_{key.id}_{secret[:20]}",
        f"cairn_{key.id}_{secret[:-1]}é",
        f"cairn_{key.id}_{'x' * 5000}",
    ):
        assert await store.verify(presented) is None, presented
    assert await store.verify(plaintext) is not None


async def test_only_the_hash_of_the_secret_is_stored(store: KeyStore, tmp_path: Path) -> None:
    plaintext, key = await store.create(a_tenant(), "member")
    secret = plaintext.removeprefix(f"cairn_{key.id}_")
    assert await store.verify(plaintext) is not None
    await store.revoke(key.id)
    text = await stored_text(store, tmp_path)
    assert key.id in text and hashlib.sha256(secret.encode()).hexdigest() in text  # We read the right place.
    assert secret not in text and plaintext not in text
    assert secret[:16] not in text  # Not even a prefix of it.


async def test_last_use_is_written_at_most_once_a_minute(store: KeyStore) -> None:
    plaintext, key = await store.create(a_tenant(), "viewer")
    assert (await store.get(key.id)).last_used_at is None  # type: ignore[union-attr]
    first = KeyStore(store.db)  # Stores sharing the database: as two API processes would.
    assert await first.verify(plaintext) is not None
    await first.close()  # Waits for the background write; the shared database stays open.
    used = (await store.get(key.id)).last_used_at  # type: ignore[union-attr]
    assert used is not None and used >= key.created_at
    assert await first.verify(plaintext) is not None  # Same process, within the minute: no write.
    second = KeyStore(store.db)
    assert await second.verify(plaintext) is not None  # Another process: its UPDATE finds nothing due.
    await second.close()
    assert (await store.get(key.id)).last_used_at == used  # type: ignore[union-attr]


async def test_tenants_roles_and_names_are_checked(store: KeyStore) -> None:
    for tenant in ("Acme", "acme corp", "", "-acme", "a" * 41, "acme.eu"):
        with pytest.raises(ValueError, match="not a tenant id"):
            await store.create(tenant, "member")
    with pytest.raises(ValueError, match="not a role"):
        await store.create(a_tenant(), "owner")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="printable"):
        await store.create(a_tenant(), "member", "line\nbreak")
    with pytest.raises(ValueError, match="not a tenant id"):
        await store.list("Not A Tenant")


async def test_sql_placeholders_mean_the_same_on_both_databases(store: KeyStore) -> None:
    row = await store.db.fetchone("SELECT '?', ?, 'it''s 100%', ? || '?'", ("one", "two"))
    assert row == ("?", "one", "it's 100%", "two?")
    _, key = await store.create(a_tenant(), "viewer", "50% off?")
    found = await store.db.fetchone(
        "SELECT name FROM cairn_api_keys WHERE id = ? AND name LIKE '%?'", (key.id,)
    )
    assert found == ("50% off?",)


async def test_the_sqlite_database_is_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keys = await KeyStore.open({"CAIRN_HOME": str(home)})
    await keys.create(a_tenant(), "admin")
    await keys.close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = sorted(home.glob("api.db*"))
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files


async def test_an_unreachable_database_is_unavailable_and_keeps_its_password(tmp_path: Path) -> None:
    dsn = f"postgresql://cairn:sekrit-pw@127.0.0.1:{free_port()}/cairn"
    keys = await KeyStore.open({"DATABASE_URL": dsn})
    with pytest.raises(DatabaseUnavailable) as caught:
        await keys.verify("cairn_0123456789ab_" + "s" * 43)
    assert "127.0.0.1" in str(caught.value) and "sekrit-pw" not in str(caught.value)
    await keys.close()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    keys = await KeyStore.open({"CAIRN_HOME": str(not_a_dir)})
    with pytest.raises(DatabaseUnavailable, match=r"api\.db"):
        await keys.create("acme", "admin")
    await keys.close()


# --- `cairn keys` -------------------------------------------------------------------------------------


def keys_env(home: Path, **extra: str) -> dict[str, str]:
    env = cli_env(CAIRN_HOME=str(home), **extra)
    if "DATABASE_URL" not in extra:
        env.pop("DATABASE_URL", None)
    return env


async def test_cairn_keys_creates_lists_and_revokes(tmp_path: Path) -> None:
    env = keys_env(tmp_path)
    _, out, _ = await run(
        CAIRN, "keys", "create", "--tenant", "acme", "--role", "member", "--name", "ci", "--json", env=env
    )
    created = json.loads(out)
    assert set(created) == {"key", "id", "tenant", "role", "name"}
    assert (created["tenant"], created["role"], created["name"]) == ("acme", "member", "ci")
    _, out, err = await run(CAIRN, "keys", "create", "--tenant", "acme", "--role", "admin", env=env)
    admin_key = out.strip()
    assert KEY_PATTERN.match(admin_key) and "shown only now" in err  # stdout holds the key alone.

    keys = await KeyStore.open({"CAIRN_HOME": str(tmp_path)})
    try:
        member = await keys.verify(created["key"])
        assert member is not None and (member.id, member.tenant, member.role) == (
            created["id"],
            "acme",
            "member",
        )
        admin = await keys.verify(admin_key)
        assert admin is not None and admin.role == "admin"

        _, listed, _ = await run(CAIRN, "keys", "list", "--json", env=env)
        _, table, _ = await run(CAIRN, "keys", "list", "--tenant", "acme", env=env)
        assert {k["id"] for k in json.loads(listed)} == {member.id, admin.id}
        for secret in (created["key"].split("_", 2)[2], admin_key.split("_", 2)[2]):
            digest = hashlib.sha256(secret.encode()).hexdigest()
            assert secret not in listed + table and digest not in listed + table
        assert member.id in table and "active" in table
        _, none, _ = await run(CAIRN, "keys", "list", "--tenant", "other", env=env)
        assert "has no API keys" in none

        _, out, _ = await run(CAIRN, "keys", "revoke", member.id, "--json", env=env)
        assert json.loads(out)["revoked"] is True and await keys.verify(created["key"]) is None
        assert await keys.verify(admin_key) is not None
    finally:
        await keys.close()

    code, _, err = await run(CAIRN, "keys", "revoke", member.id, env=env, check=False)
    assert code == 1 and f"API key {member.id} was already revoked" in err
    code, _, err = await run(CAIRN, "keys", "revoke", "0123456789ab", env=env, check=False)
    assert code == 1 and "no API key has the id" in err
    code, _, err = await run(
        CAIRN, "keys", "create", "--tenant", "Acme Corp", "--role", "admin", env=env, check=False
    )
    assert code == 1 and err.startswith("cairn: ") and "not a tenant id" in err
    code, _, err = await run(
        CAIRN, "keys", "create", "--tenant", "acme", "--role", "owner", env=env, check=False
    )
    assert code == 2 and "invalid choice" in err


async def test_cairn_keys_uses_postgres_when_database_url_is_set(tmp_path: Path, postgres_dsn: str) -> None:
    tenant = a_tenant()
    env = keys_env(tmp_path, DATABASE_URL=postgres_dsn)
    _, out, _ = await run(CAIRN, "keys", "create", "--tenant", tenant, "--role", "viewer", "--json", env=env)
    created = json.loads(out)
    assert not list(tmp_path.glob("api.db*"))  # Nothing went to SQLite.
    keys = await KeyStore.open({"DATABASE_URL": postgres_dsn})
    try:
        verified = await keys.verify(created["key"])
        assert verified is not None and verified.tenant == tenant and verified.role == "viewer"
    finally:
        await keys.close()
    _, out, _ = await run(CAIRN, "keys", "list", "--tenant", tenant, "--json", env=env)
    assert [k["id"] for k in json.loads(out)] == [created["id"]]


# --- Bearer credentials -------------------------------------------------------------------------------


def test_roles_allow_what_the_table_says() -> None:
    expected = {
        "viewer": {"read"},
        "member": {"read", "write"},
        "admin": {"read", "write", "admin"},
    }
    for role, actions in expected.items():
        for action in ("read", "write", "admin"):
            assert allows(role, action) is (action in actions), (role, action)  # type: ignore[arg-type]
    assert allows("owner", "read") is False  # type: ignore[arg-type]


async def refused(auth: Authenticator, header: str | None, why: str) -> None:
    with pytest.raises(AuthError) as caught:
        await auth.authenticate(header)
    message = str(caught.value)
    assert why in message, message
    credential = (header or "").partition(" ")[2].strip()
    if len(credential) > 8:
        assert credential not in message and credential[-12:] not in message


async def test_api_keys_authenticate_as_their_tenant_and_role(tmp_path: Path) -> None:
    keys = await KeyStore.open({"CAIRN_HOME": str(tmp_path)})
    auth = Authenticator.from_env({}, keys)
    try:
        plaintext, key = await keys.create("acme", "member")
        principal = await auth.authenticate(f"Bearer {plaintext}")
        assert (principal.tenant, principal.role, principal.via) == ("acme", "member", "key")
        assert principal.subject == key.id == principal.key_id
        assert (await auth.authenticate(f"bearer  {plaintext} ")).tenant == "acme"
        await refused(auth, None, "missing bearer credentials")
        await refused(auth, "  ", "missing bearer credentials")
        await refused(auth, f"Basic {plaintext}", "must be 'Bearer")
        await refused(auth, "Bearer", "must be 'Bearer")
        await refused(auth, f"Bearer {plaintext[:-2]}xx", "unknown or revoked API key")
        await refused(auth, "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "no OIDC issuer is configured")
        await refused(auth, "Bearer " + "a" * 20_000, "too long")
        await keys.revoke(key.id)
        await refused(auth, f"Bearer {plaintext}", "unknown or revoked API key")
    finally:
        await auth.close()
        await keys.close()


def test_oidc_settings_are_checked() -> None:
    assert OIDCConfig.from_env({}) is None
    for env, why in (
        ({"CAIRN_OIDC_ISSUER": "https://id.example.org"}, "CAIRN_OIDC_AUDIENCE is not set"),
        ({"CAIRN_OIDC_AUDIENCE": AUDIENCE}, "CAIRN_OIDC_ISSUER is not set"),
        ({"CAIRN_OIDC_ISSUER": "http://id.example.org", "CAIRN_OIDC_AUDIENCE": AUDIENCE}, "must be an https"),
        ({"CAIRN_OIDC_ISSUER": "http://10.0.0.1", "CAIRN_OIDC_AUDIENCE": AUDIENCE}, "must be an https"),
        ({"CAIRN_OIDC_ISSUER": "file:///etc/x", "CAIRN_OIDC_AUDIENCE": AUDIENCE}, "must be an https"),
        ({"CAIRN_OIDC_ISSUER": "https://id.example.org", "CAIRN_OIDC_AUDIENCE": AUDIENCE,
          "CAIRN_OIDC_JWKS_REFRESH_SECONDS": "0"}, "greater than 0"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=why):
            OIDCConfig.from_env(env)
    for issuer in (
        "https://id.example.org/realms/acme",
        "http://127.0.0.1:8080",
        "http://localhost:1",
        "http://[::1]:9",
    ):
        config = OIDCConfig.from_env({"CAIRN_OIDC_ISSUER": issuer, "CAIRN_OIDC_AUDIENCE": AUDIENCE})
        assert config is not None and config.issuer == issuer and config.tenant_claim == "cairn_tenant"


# --- OpenID Connect against a real issuer ---------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    server.publish("rsa-1", KEYS["rsa"])  # No "alg": an RSA key serves RS* and PS* alike.
    server.publish("ec-1", KEYS["ec"], alg="ES256")
    server.publish("ed-1", KEYS["ed"])
    yield server
    server.stop()


@pytest.fixture
async def oidc(issuer: Issuer, tmp_path: Path) -> AsyncIterator[Authenticator]:
    keys = await KeyStore.open({"CAIRN_HOME": str(tmp_path)})
    env = {
        "CAIRN_OIDC_ISSUER": issuer.url,
        "CAIRN_OIDC_AUDIENCE": AUDIENCE,
        "CAIRN_OIDC_JWKS_REFRESH_SECONDS": "2",
    }
    auth = Authenticator.from_env(env, keys)
    yield auth
    await auth.close()
    await keys.close()


async def test_the_issuers_tokens_authenticate_with_their_claims(issuer: Issuer, oidc: Authenticator) -> None:
    for key, kid, alg in (("rsa", "rsa-1", "RS256"), ("rsa", "rsa-1", "PS384"), ("ec", "ec-1", "ES256"),
                          ("ed", "ed-1", "EdDSA")):  # fmt: skip
        principal = await oidc.authenticate(f"Bearer {issuer.token(KEYS[key], kid, alg)}")
        assert (principal.tenant, principal.role, principal.subject) == ("acme", "member", "user-7"), alg
        assert principal.via == "oidc" and principal.key_id is None
    token = issuer.token(KEYS["rsa"], "rsa-1", cairn_role=None, cairn_tenant="team-7", sub="svc")
    principal = await oidc.authenticate(f"Bearer {token}")
    assert (principal.tenant, principal.role, principal.subject) == (
        "team-7",
        "viewer",
        "svc",
    )  # Least privilege.
    late = issuer.token(KEYS["rsa"], "rsa-1", exp=int(time.time()) - 10, cairn_role="admin")
    assert (await oidc.authenticate(f"Bearer {late}")).role == "admin"  # Within the clock-skew leeway.
    assert issuer.requests["/.well-known/openid-configuration"] == 1 and issuer.jwks_fetches == 1


async def test_forged_expired_and_misaddressed_tokens_are_refused(
    issuer: Issuer, oidc: Authenticator
) -> None:
    now = int(time.time())
    rsa_key, kid = KEYS["rsa"], "rsa-1"
    header = {"typ": "JWT", "kid": kid}
    body = b64(json.dumps(issuer.claims(cairn_role="admin")).encode())
    unsigned = f"{b64(json.dumps(header | {'alg': 'none'}).encode())}.{body}."
    # Key confusion: HMAC keyed with the issuer's public key, which anyone can download.
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64(json.dumps(header | {'alg': 'HS256'}).encode())}.{body}"
    confused = f"{signing_input}.{b64(hmac.new(public_pem, signing_input.encode(), 'sha256').digest())}"
    cases = [
        (issuer.token(rsa_key, kid, exp=now - 120), "token expired"),
        (issuer.token(rsa_key, kid, nbf=now + 300), "not valid yet"),
        (issuer.token(rsa_key, kid, iat=now + 300), "not valid yet"),
        (issuer.token(rsa_key, kid, iss="http://127.0.0.1:1"), f"token issuer is not {issuer.url}"),
        (issuer.token(rsa_key, kid, iss=issuer.url + "/"), "token issuer is not"),
        (issuer.token(rsa_key, kid, aud="another-api"), "token audience is not cairn-api"),
        (issuer.token(KEYS["rogue"], kid), "token signature invalid"),  # Another key, the same kid.
        (unsigned, "token algorithm 'none' is not accepted"),
        (confused, "token algorithm 'HS256' is not accepted"),
        (issuer.token(rsa_key, "ec-1"), "does not fit the issuer's key"),  # RS256 against an EC key.
        (issuer.token(KEYS["ec"], "ed-1", "ES256"), "does not fit"),  # ES256 against an Ed25519 key.
        (issuer.token(rsa_key, kid, exp=None), "token has no 'exp' claim"),
        (issuer.token(rsa_key, kid, aud=None), "token has no 'aud' claim"),
        (issuer.token(rsa_key, kid, sub=None), "token has no 'sub' claim"),
        (issuer.token(rsa_key, kid, cairn_tenant=None), "no valid 'cairn_tenant' claim"),
        (issuer.token(rsa_key, kid, cairn_tenant="Acme Corp"), "no valid 'cairn_tenant' claim"),
        (issuer.token(rsa_key, kid, cairn_tenant=["acme"]), "no valid 'cairn_tenant' claim"),
        (issuer.token(rsa_key, kid, cairn_role="owner"), "'cairn_role' claim is not one of"),
        (jwt.encode(issuer.claims(), rsa_key, algorithm="RS256"), "token has no key id"),
        ("not-a-jwt", "neither a Cairn API key nor a well-formed JWT"),
    ]
    for token, why in cases:
        await refused(oidc, f"Bearer {token}", why)
    assert issuer.jwks_fetches == 1  # Known key ids all along: the cached key set answered.


async def test_unknown_key_ids_refresh_the_keys_at_most_once_per_interval(
    issuer: Issuer, oidc: Authenticator
) -> None:
    started = time.monotonic()
    assert (await oidc.authenticate(f"Bearer {issuer.token(KEYS['rsa'], 'rsa-1')}")).tenant == "acme"
    assert issuer.jwks_fetches == 1
    forged = [f"Bearer {issuer.token(KEYS['rogue'], f'forged-{i}')}" for i in range(30)]
    outcomes = await asyncio.gather(*(oidc.authenticate(h) for h in forged), return_exceptions=True)
    assert all(isinstance(o, AuthError) and "not among the issuer's keys" in str(o) for o in outcomes)
    assert time.monotonic() - started < 2, "too slow to test the refresh interval"
    assert issuer.jwks_fetches == 1  # Within the interval since the last fetch: the issuer is spared.

    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.publish("rsa-2", rotated, alg="RS256")
    await asyncio.sleep(2.1)
    principal = await oidc.authenticate(f"Bearer {issuer.token(rotated, 'rsa-2', cairn_role='admin')}")
    assert principal.role == "admin" and issuer.jwks_fetches == 2  # One refresh found the new key.
    outcomes = await asyncio.gather(*(oidc.authenticate(h) for h in forged), return_exceptions=True)
    assert all(isinstance(o, AuthError) for o in outcomes) and issuer.jwks_fetches == 2

    await asyncio.sleep(2.1)
    await refused(oidc, forged[0], "not among the issuer's keys")
    assert issuer.jwks_fetches == 3  # Past the interval an unknown kid refreshes once...
    await refused(oidc, forged[1], "not among the issuer's keys")
    assert issuer.jwks_fetches == 3  # ...and the next one waits for the next interval.
    assert (await oidc.authenticate(f"Bearer {issuer.token(KEYS['ec'], 'ec-1', 'ES256')}")).tenant == "acme"
    assert issuer.requests["/.well-known/openid-configuration"] == 1


async def test_an_issuer_that_does_not_answer_is_unavailable_and_asked_sparingly(
    issuer: Issuer, oidc: Authenticator
) -> None:
    token = f"Bearer {issuer.token(KEYS['rsa'], 'rsa-1')}"
    issuer.failing = True
    for _ in range(10):
        with pytest.raises(AuthUnavailable, match=r"discovery .* failed"):
            await oidc.authenticate(token)
    assert issuer.requests["/.well-known/openid-configuration"] == 1  # Failing fast, not hammering it.
    issuer.failing = False
    await asyncio.sleep(5.1)
    assert (await oidc.authenticate(token)).tenant == "acme"


async def test_a_discovery_document_naming_another_issuer_is_not_trusted(
    issuer: Issuer, oidc: Authenticator
) -> None:
    issuer.claims_issuer = "https://impostor.example.org"
    with pytest.raises(AuthUnavailable, match="names another issuer"):
        await oidc.authenticate(f"Bearer {issuer.token(KEYS['rsa'], 'rsa-1')}")
    assert issuer.jwks_fetches == 0


async def test_custom_claim_names(issuer: Issuer, tmp_path: Path) -> None:
    db = await open_database({"CAIRN_HOME": str(tmp_path)})
    keys = KeyStore(db, owns_db=True)
    env = {
        "CAIRN_OIDC_ISSUER": issuer.url,
        "CAIRN_OIDC_AUDIENCE": AUDIENCE,
        "CAIRN_OIDC_TENANT_CLAIM": "org",
        "CAIRN_OIDC_ROLE_CLAIM": "perm",
    }
    auth = Authenticator.from_env(env, keys)
    try:
        token = issuer.token(KEYS["rsa"], "rsa-1", org="globex", perm="admin", cairn_tenant="acme")
        principal = await auth.authenticate(f"Bearer {token}")
        assert (principal.tenant, principal.role) == ("globex", "admin")
        await refused(auth, f"Bearer {issuer.token(KEYS['rsa'], 'rsa-1')}", "no valid 'org' claim")
    finally:
        await auth.close()
        await keys.close()

"""`cairn serve` over real HTTP: tenants never see each other's runs, roles are enforced, starts are
idempotent, quotas refuse clearly, event streams survive the API process's death, and the CLI works
through the API with only a key.

Everything is real: the session's Temporal dev server, a worker, the scripted LLM, and `cairn serve`
as its own process on loopback (tests/api_support.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from testkit.dev_server import DevServer
from testkit.oidc_issuer import AUDIENCE, KEYS, Issuer
from tests.api_support import ApiStack, api_stack
from tests.conftest import CAIRN
from tests.helpers import run

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    server.publish("rsa-1", KEYS["rsa"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def stack(
    dev_server: DevServer,
    temporal_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    payload_dir: Path,
    issuer: Issuer,
) -> AsyncIterator[ApiStack]:
    async for built in api_stack(
        dev_server,
        temporal_client,
        tmp_path_factory.mktemp("api"),
        payload_dir,
        CAIRN_OIDC_ISSUER=issuer.url,
        CAIRN_OIDC_AUDIENCE=AUDIENCE,
    ):
        yield built


async def start(http: httpx.AsyncClient, question: str = "How do glaciers move?", **options: Any) -> str:
    response = await http.post("/v1/runs", json={"question": question, **options})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def wait_phase(
    http: httpx.AsyncClient, run_id: str, *phases: str, seconds: float = 30
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + seconds
    body: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        response = await http.get(f"/v1/runs/{run_id}")
        if response.status_code == 200:
            body = response.json()
            if body["phase"] in phases:
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{run_id} never reached {phases}: {body}")


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


# Every route that names a run, with a body it would accept from the run's own tenant.
RUN_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("GET", "/report", None),
    ("GET", "/events", None),
    ("GET", "/artifacts/chart.png", None),
    ("POST", "/approve", {}),
    ("POST", "/revise", {"feedback": "more on ice"}),
    ("PUT", "/plan", {"plan_version": 1, "steps": [{"title": "Only this"}]}),
    ("POST", "/abort", {"reason": "mine now"}),
    ("POST", "/skip", {"step_id": "s1"}),
    ("POST", "/steps", {"title": "An extra step"}),
    ("POST", "/budget", {"token_budget": 100000}),
]
WRITE_ROUTES = [r for r in RUN_ROUTES if r[0] != "GET"]


async def test_another_tenants_run_is_a_run_that_does_not_exist(stack: ApiStack) -> None:
    async with await stack.client("acme") as acme, await stack.client("globex") as globex:
        run_id = await start(acme, "Acme's secret question about glaciers")
        await wait_phase(acme, run_id, "awaiting_approval")
        missing = run_id.replace("acme.", "acme.nope-")
        for method, suffix, body in RUN_ROUTES:
            theirs = await globex.request(method, f"/v1/runs/{run_id}{suffix}", json=body)
            nothing = await globex.request(method, f"/v1/runs/{missing}{suffix}", json=body)
            assert problem(theirs, 404)["detail"] == f"no run with id {run_id}", (method, suffix)
            assert problem(nothing, 404)["detail"] == f"no run with id {missing}", (method, suffix)
        listed = (await globex.get("/v1/runs")).json()["runs"]
        assert run_id not in {r["id"] for r in listed}
        # None of globex's attempts reached the run: it still awaits approval of plan v1, unchanged.
        status = (await acme.get(f"/v1/runs/{run_id}")).json()
        assert status["phase"] == "awaiting_approval" and status["plan"]["version"] == 1
        assert all(s["status"] == "pending" for s in status["plan"]["steps"])
        assert [s["title"] for s in status["plan"]["steps"]] != ["Only this"]
        mine = (await acme.get("/v1/runs")).json()["runs"]
        assert run_id in {r["id"] for r in mine}
        assert next(r for r in mine if r["id"] == run_id)["question"].startswith("Acme's secret")
        await acme.post(f"/v1/runs/{run_id}/abort", json={})


async def test_a_viewer_reads_but_changes_nothing(stack: ApiStack) -> None:
    async with await stack.client("acme") as member, await stack.client("acme", "viewer") as viewer:
        run_id = await start(member)
        await wait_phase(member, run_id, "awaiting_approval")
        for method, suffix, body in WRITE_ROUTES:
            response = await viewer.request(method, f"/v1/runs/{run_id}{suffix}", json=body)
            assert "viewer" in problem(response, 403)["detail"], (method, suffix)
        problem(await viewer.post("/v1/runs", json={"question": "Mine?"}), 403)
        problem(await viewer.post("/v1/documents", files={"file": ("a.txt", b"text")}), 403)
        assert (await viewer.get(f"/v1/runs/{run_id}")).json()["phase"] == "awaiting_approval"
        assert run_id in {r["id"] for r in (await viewer.get("/v1/runs")).json()["runs"]}
        await member.post(f"/v1/runs/{run_id}/abort", json={})


async def test_missing_unknown_revoked_and_malformed_credentials_are_401(stack: ApiStack) -> None:
    from client.server.keys import KeyStore

    store = await KeyStore.open({"CAIRN_HOME": str(stack.home)})
    try:
        revoked, record = await store.create("acme", "member", "to revoke")
        assert await store.revoke(record.id)
    finally:
        await store.close()
    valid = await stack.key("acme")
    key_id = valid.split("_")[1]
    cases = {
        "missing": None,
        "unknown": "Bearer cairn_000000000000_" + "x" * 43,
        "revoked": f"Bearer {revoked}",
        "altered": f"Bearer {valid[:-2]}{'AB' if not valid.endswith('AB') else 'CD'}",
        "wrong scheme": f"Basic {valid}",
        "not a key": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "another key's id": f"Bearer cairn_{key_id}_{'y' * 43}",
    }
    async with httpx.AsyncClient(base_url=stack.api.url) as anonymous:
        for case, header in cases.items():
            headers = {"Authorization": header} if header else {}
            response = await anonymous.get("/v1/runs", headers=headers)
            problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer"), case
            assert (valid not in response.text) and (revoked not in response.text), case
    assert valid not in stack.api.log() and revoked not in stack.api.log()


async def test_one_idempotency_key_starts_one_run(stack: ApiStack) -> None:
    async with await stack.client("acme") as http:
        body = {"question": "Idempotent glaciers?"}
        headers = {"Idempotency-Key": "order-4711"}
        first, second = await asyncio.gather(
            http.post("/v1/runs", json=body, headers=headers),
            http.post("/v1/runs", json=body, headers=headers),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 201], (first.text, second.text)
        assert first.json()["id"] == second.json()["id"]
        run_id = first.json()["id"]
        count = await stack.temporal.count_workflows(f"WorkflowId = '{run_id}'")
        assert count.count == 1
        again = await http.post("/v1/runs", json=body, headers=headers)
        assert again.status_code == 200 and again.json() == {**again.json(), "id": run_id, "created": False}
        other = await http.post("/v1/runs", json={"question": "Something else"}, headers=headers)
        assert "different request" in problem(other, 422)["detail"]
        # The same key from another tenant is another tenant's run.
        async with await stack.client("globex") as globex:
            theirs = await globex.post("/v1/runs", json=body, headers=headers)
            assert theirs.status_code == 201 and theirs.json()["id"] != run_id
            await globex.post(f"/v1/runs/{theirs.json()['id']}/abort", json={})
        await http.post(f"/v1/runs/{run_id}/abort", json={})


async def test_a_run_over_the_concurrent_limit_is_refused_until_one_ends(stack: ApiStack) -> None:
    async with await stack.client("solo") as http:
        first = await start(http)
        await wait_phase(http, first, "awaiting_approval")
        refused = await http.post("/v1/runs", json={"question": "A second one?"})
        body = problem(refused, 429)
        assert "limit of concurrent runs" in body["detail"] and int(refused.headers["retry-after"]) > 0
        await http.post(f"/v1/runs/{first}/abort", json={})
        await wait_phase(http, first, "aborted")
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # Visibility shows the first run closed a moment after it closes.
            accepted = await http.post("/v1/runs", json={"question": "A second one?"})
            if accepted.status_code == 201 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(float(accepted.headers.get("retry-after", "1")) / 5)
        assert accepted.status_code == 201, accepted.text
        await http.post(f"/v1/runs/{accepted.json()['id']}/abort", json={})


async def test_a_daily_token_limit_gives_each_run_a_budget_within_it(stack: ApiStack) -> None:
    async with await stack.client("frugal") as http:
        response = await http.post("/v1/runs", json={"question": "Frugal glaciers?"})
        assert response.status_code == 201
        started = response.json()
        # 40,000 tokens a day over 2 concurrent runs: each run gets at most half.
        assert started["token_budget"] == 20000
        run_id = started["id"]
        status = await wait_phase(http, run_id, "awaiting_approval")
        assert status["budget"]["token_budget"] == 20000
        too_much = await http.post(f"/v1/runs/{run_id}/budget", json={"token_budget": 50000})
        assert "left for this run today" in problem(too_much, 429)["detail"]
        raised = await http.post(f"/v1/runs/{run_id}/budget", json={"token_budget": 30000})
        assert raised.status_code == 200 and raised.json()["token_budget"] == 30000
        # Only 10,000 are left for another run today.
        second = await http.post("/v1/runs", json={"question": "And another?"})
        assert second.status_code == 201 and second.json()["token_budget"] == 10000
        for rid in (run_id, second.json()["id"]):
            await http.post(f"/v1/runs/{rid}/abort", json={})


async def test_each_credential_is_rate_limited(stack: ApiStack) -> None:
    async with await stack.client("chatty") as http:
        answers = [(await http.get("/v1/runs")).status_code for _ in range(7)]
        assert answers[:5] == [200] * 5 and answers[5:] == [429, 429]
        limited = await http.get("/v1/runs")
        assert int(limited.headers["retry-after"]) >= 1
    async with await stack.client("chatty", "viewer") as other_key:
        assert (await other_key.get("/v1/runs")).status_code == 200  # Per key, not per tenant.


async def read_events(
    http: httpx.AsyncClient, run_id: str, after: int | None = None, stop: int | None = None
) -> list[tuple[int, str, str]]:
    """(id, event, data) of the run's events after `after`, until the last one or `stop` events."""
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    events: list[tuple[int, str, str]] = []
    current: dict[str, str] = {}
    async with http.stream("GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
                continue
            if "data" in current:
                events.append((int(current["id"]), current["event"], current["data"]))
                if current["event"] in ("done", "aborted", "failed") or (stop and len(events) >= stop):
                    return events
            current = {}
    return events


async def test_a_stream_resumes_exactly_after_the_api_process_is_killed(stack: ApiStack) -> None:
    async with await stack.client("acme") as http:
        run_id = await start(http, "How do glaciers move? [steps=3]")
        first = await read_events(http, run_id, stop=4)
        assert [e[1] for e in first] == ["phase", "plan", "spend", "phase"]
        assert json.loads(first[-1][2])["phase"] == "awaiting_approval"
        await wait_phase(http, run_id, "awaiting_approval")
        stack.api.kill()
        stack.api.start()
        await http.post(f"/v1/runs/{run_id}/approve", json={})
        stack.llm.latency = 0.3  # Long enough to kill the API again while steps run.
        try:
            middle = await read_events(http, run_id, after=first[-1][0], stop=4)
            stack.api.kill()
            stack.api.start()
            rest = await read_events(http, run_id, after=middle[-1][0])
        finally:
            stack.llm.latency = 0.0
        joined = first + middle + rest
        whole = await read_events(http, run_id)
        assert joined == whole
        assert [e[0] for e in whole] == list(range(1, len(whole) + 1))
        kinds = [e[1] for e in whole]
        assert kinds[-1] == "done" and kinds.count("done") == 1
        assert {"plan", "phase", "step_started", "step_finished", "spend", "tool_call"} <= set(kinds)
        calls = [json.loads(d)["tool"] for _, k, d in whole if k == "tool_call"]
        assert {c["tool"] for c in calls} == {"corpus_search"}
        assert all(c["step_id"] in ("s1", "s2", "s3") and c["detail"] and c["outcome"] == "ok" for c in calls)
        finished = [json.loads(d) for _, k, d in whole if k == "step_finished"]
        assert all(f["summary"] for f in finished)
        # Nothing is left after the last event: an EventSource told 204 stops reconnecting.
        after_end = await http.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(whole[-1][0])})
        assert after_end.status_code == 204


async def test_security_headers_body_cap_and_no_cors_by_default(stack: ApiStack) -> None:
    async with await stack.client("acme") as http:
        for response in (
            await http.get("/v1/runs"),
            await http.get("/healthz"),
            await http.get("/v1/runs/nope"),
        ):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert "default-src 'none'" in response.headers["content-security-policy"]
            assert response.headers["cache-control"] == "no-store"
            assert "server" not in response.headers
        too_big = await http.post("/v1/runs", content=b"{" + b" " * (1024 * 1024 + 10) + b"}")
        problem(too_big, 413)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b" " * 65536

        chunked = await http.post("/v1/runs", content=chunks(), headers={"Content-Type": "application/json"})
        problem(chunked, 413)
        preflight = await http.options(
            "/v1/runs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
    async with httpx.AsyncClient(base_url=stack.api.url) as anonymous:
        assert (await anonymous.get("/readyz")).json()["status"] == "ok"
        spec = (await anonymous.get("/openapi.json")).json()
        assert {"/v1/runs", "/v1/runs/{run_id}/events", "/v1/documents"} <= set(spec["paths"])
        assert (await anonymous.get("/docs")).status_code == 200
        problem(await anonymous.post("/v1/runs", json={"question": "?"}), 401)


async def test_bad_requests_get_clear_problems(stack: ApiStack) -> None:
    async with await stack.client("acme") as http:
        empty = problem(await http.post("/v1/runs", json={"question": "  "}), 422)
        assert "question is empty" in empty["detail"]
        typo = problem(await http.post("/v1/runs", json={"question": "Q?", "max_step": 3}), 422)
        assert "max_step" in typo["detail"]
        tenant = problem(await http.post("/v1/runs", json={"question": "Q?", "tenant": "globex"}), 422)
        assert "tenant" in tenant["detail"]
        problem(
            await http.post("/v1/runs", content=b"not json", headers={"Content-Type": "application/json"}),
            422,
        )
        problem(await http.get("/v1/runs", params={"phase": "dancing"}), 422)
        problem(await http.get("/v1/runs", params={"cursor": "bm9wZQ"}), 422)
        run_id = await start(http)
        await wait_phase(http, run_id, "awaiting_approval")
        stale = await http.put(f"/v1/runs/{run_id}/plan", json={"plan_version": 7, "steps": [{"title": "x"}]})
        assert "stale" in problem(stale, 409)["detail"]
        misspelt = await http.post(f"/v1/runs/{run_id}/approve", json={"plan_verison": 1})
        assert "plan_verison" in problem(misspelt, 422)["detail"]
        early = problem(await http.get(f"/v1/runs/{run_id}/report"), 409)
        assert "not written yet" in early["detail"]
        bad_id = await http.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": "x1"})
        problem(bad_id, 422)
        await http.post(f"/v1/runs/{run_id}/abort", json={})
        await wait_phase(http, run_id, "aborted")
        report = await http.get(f"/v1/runs/{run_id}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
        whole = await http.get(f"/v1/runs/{run_id}/report", headers={"Accept": "application/json"})
        assert whole.json()["aborted"] is True and "report_path" not in whole.json()


async def test_runs_list_pages_with_a_cursor_bound_to_the_listing(stack: ApiStack) -> None:
    async with await stack.client("pager") as http:
        started = [await start(http, f"Question {n}?") for n in range(3)]
        deadline = asyncio.get_running_loop().time() + 20
        while len((await http.get("/v1/runs")).json()["runs"]) < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
        # The newest run ends while the older two wait: newest first still puts it first (Temporal's
        # own visibility order would put the running ones before it).
        await http.post(f"/v1/runs/{started[2]}/abort", json={})
        await wait_phase(http, started[2], "aborted")
        while (await http.get("/v1/runs", params={"phase": "aborted"})).json()["runs"] == []:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
        first = (await http.get("/v1/runs", params={"limit": 2})).json()
        assert len(first["runs"]) == 2 and first["next_cursor"]
        second = (await http.get("/v1/runs", params={"limit": 2, "cursor": first["next_cursor"]})).json()
        assert second["next_cursor"] is None
        assert [r["id"] for r in first["runs"] + second["runs"]] == started[::-1]
        # A cursor of this listing is refused for another one (a phase filter).
        other = await http.get(
            "/v1/runs", params={"limit": 2, "cursor": first["next_cursor"], "phase": "done"}
        )
        problem(other, 422)
        for rid in started:
            await http.post(f"/v1/runs/{rid}/abort", json={})


async def test_the_cli_works_through_the_api_with_only_a_key(stack: ApiStack, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in stack.env.items() if not k.startswith(("TEMPORAL_", "CAIRN_"))},
        "CAIRN_API_URL": stack.api.url,
        "CAIRN_API_KEY": await stack.key("initech"),
        "CAIRN_HOME": str(tmp_path),
    }
    _, out, _ = await run(CAIRN, "research", "CLI through the API?", "--json", env=env)
    run_id = json.loads(out)["workflow_id"]
    assert run_id.startswith("initech.")
    async with await stack.client("initech") as http:
        await wait_phase(http, run_id, "awaiting_approval")
    _, out, _ = await run(CAIRN, "status", run_id, "--json", env=env)
    assert json.loads(out)["phase"] == "awaiting_approval"
    await run(CAIRN, "approve", run_id, env=env)
    _, out, _ = await run(CAIRN, "research", "x", "--wait", "--auto-approve", "--json", env=env, seconds=120)
    assert json.loads(out)["report"].startswith("#")
    _, out, _ = await run(CAIRN, "list", "--json", env=env)
    assert run_id in {r["workflow_id"] for r in json.loads(out)}
    code, _, err = await run(CAIRN, "status", "acme.research-000000000000", env=env, check=False)
    assert code == 1 and "no run with id acme.research-000000000000" in err
    bad = {**env, "CAIRN_API_KEY": "cairn_000000000000_" + "z" * 43}
    code, _, err = await run(CAIRN, "list", env=bad, check=False)
    assert code == 1 and "the API refused the key" in err and "zzzz" not in err


async def test_oidc_tokens_authenticate_and_forged_ones_are_401(stack: ApiStack, issuer: Issuer) -> None:
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    good = issuer.token(KEYS["rsa"], "rsa-1", cairn_tenant="acme", cairn_role="member")
    async with httpx.AsyncClient(base_url=stack.api.url) as http:
        started = await http.post("/v1/runs", json={"question": "Token glaciers?"}, headers=bearer(good))
        assert started.status_code == 201 and started.json()["tenant"] == "acme"
        run_id = started.json()["id"]
        # The token's tenant sees the run like a key of the same tenant does.
        async with await stack.client("acme", "viewer") as key:
            assert (await key.get(f"/v1/runs/{run_id}")).status_code == 200
        viewer = issuer.token(KEYS["rsa"], "rsa-1", cairn_tenant="acme", cairn_role=None)
        problem(await http.post(f"/v1/runs/{run_id}/abort", json={}, headers=bearer(viewer)), 403)
        other = issuer.token(KEYS["rsa"], "rsa-1", cairn_tenant="globex", cairn_role="admin")
        problem(await http.get(f"/v1/runs/{run_id}", headers=bearer(other)), 404)
        now = int(time.time())
        header = json.dumps({"alg": "none", "typ": "JWT"}).encode()
        claims = json.dumps(issuer.claims()).encode()
        unsigned = f"{b64(header)}.{b64(claims)}."
        forged = {
            "expired": issuer.token(KEYS["rsa"], "rsa-1", exp=now - 600, iat=now - 900),
            "wrongly signed": issuer.token(KEYS["rogue"], "rsa-1"),
            "wrong audience": issuer.token(KEYS["rsa"], "rsa-1", aud="another-api"),
            "alg none": unsigned,
        }
        for case, token in forged.items():
            refused = await http.get("/v1/runs", headers=bearer(token))
            assert problem(refused, 401)["detail"], case
        await http.post(f"/v1/runs/{run_id}/abort", json={}, headers=bearer(good))
    assert good not in stack.api.log()


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


ACME_NOTE = b"# Acme notes\n\nThe zyxwvut bolometer of acme measures glacier heat flow precisely.\n"


async def test_documents_are_the_tenants_own(stack: ApiStack) -> None:
    async with await stack.client("docs-a") as acme, await stack.client("docs-b") as globex:
        uploaded = await acme.post("/v1/documents", files={"file": ("acme-notes.md", ACME_NOTE)})
        assert uploaded.status_code == 201, uploaded.text
        assert uploaded.json()["passages"] >= 1
        mine = (await acme.get("/v1/documents")).json()["documents"]
        assert [d["path"] for d in mine] == ["upload:acme-notes.md"]
        assert (await globex.get("/v1/documents")).json()["documents"] == []
        text = await acme.get("/v1/documents/text", params={"path": "upload:acme-notes.md"})
        assert text.status_code == 200, text.text
        assert text.json()["document"]["path"] == "upload:acme-notes.md"
        assert "zyxwvut bolometer of acme" in " ".join(p["text"] for p in text.json()["passages"])
        # Another tenant's document is a 404, like one that does not exist; a missing path is refused.
        problem(await globex.get("/v1/documents/text", params={"path": "upload:acme-notes.md"}), 404)
        problem(await acme.get("/v1/documents/text", params={"path": "upload:other.md"}), 404)
        problem(await acme.get("/v1/documents/text"), 422)
        elf = await acme.post("/v1/documents", files={"file": ("notes.txt", b"\x7fELF\x02\x01" + bytes(200))})
        problem(elf, 422)
        problem(await acme.post("/v1/documents", files={"file": ("notes.docx", b"PK\x03\x04")}), 422)
        # Each tenant's research searches its own documents: globex's run finds nothing of acme's.
        question = "What measures heat? [steps=1] [query=zyxwvut bolometer]"
        reports = {}
        for name, http in (("docs-a", acme), ("docs-b", globex)):
            run_id = await start(http, question, auto_approve=True, max_plan_iterations=0)
            await wait_phase(http, run_id, "done", seconds=60)
            reports[name] = (await http.get(f"/v1/runs/{run_id}/report")).text
        assert "acme-notes.md" in reports["docs-a"].replace("\\", "")
        assert "acme-notes.md" not in reports["docs-b"].replace("\\", "")
        assert "bolometer of acme" not in reports["docs-b"]


async def test_an_admin_manages_the_tenants_keys_and_only_them(stack: ApiStack) -> None:
    async with await stack.client("keyed", "admin") as admin, await stack.client("keyed") as member:
        made = await admin.post("/v1/keys", json={"role": "viewer", "name": "dashboard"})
        assert made.status_code == 201
        key, key_id = made.json()["key"], made.json()["id"]
        assert made.json()["tenant"] == "keyed" and made.json()["role"] == "viewer"
        listed = (await admin.get("/v1/keys")).json()["keys"]
        assert key_id in {k["id"] for k in listed} and key not in json.dumps(listed)
        problem(await member.get("/v1/keys"), 403)
        problem(await member.post("/v1/keys", json={"role": "admin"}), 403)
        async with await stack.client("other", "admin") as stranger:
            problem(await stranger.delete(f"/v1/keys/{key_id}"), 404)
            assert key_id not in {k["id"] for k in (await stranger.get("/v1/keys")).json()["keys"]}
        async with httpx.AsyncClient(
            base_url=stack.api.url, headers={"Authorization": f"Bearer {key}"}
        ) as made_one:
            assert (await made_one.get("/v1/runs")).status_code == 200
            assert (await admin.delete(f"/v1/keys/{key_id}")).status_code == 204
            problem(await made_one.get("/v1/runs"), 401)
        problem(await admin.delete(f"/v1/keys/{key_id}"), 404)

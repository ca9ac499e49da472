"""The tenant's library: every finished run's pages and findings join it, later runs' researchers search
it (by default for follow-ups and scheduled runs, as an option for any run), `cairn library search` and
`GET /v1/library/search` show what a run would find there, and no tenant ever finds another's.

Real components: the session's Temporal dev server, a worker, the scripted LLM and `cairn serve`
(tests/api_support.py) over the API's SQLite corpus; the archive copy against SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.corpus import Corpus, PostgresCorpus, SQLiteCorpus
from activities.library import LibraryActivities
from common.models import Claim, Finding, LibraryAdd, ResearchResult, Source
from common.tenancy import library_scope
from common.web_config import SearchConfig
from tests.api_support import ApiStack, stack_fixture
from tests.conftest import CAIRN
from tests.helpers import run
from tests.test_living import DOC_A, QUERY, report_of, upload

PAGE = "# Glacier bulletin\n\nThe kerr glacier moraine bulletin.\n\nSecond paragraph: the ridge moved.\n"


stack = stack_fixture("library", worker_options={"search": SearchConfig()})


async def finished(http: httpx.AsyncClient, question: str, **options: object) -> str:
    response = await http.post("/v1/runs", json={"question": question, "auto_approve": True, **options})
    assert response.status_code == 201, response.text
    run_id = str(response.json()["id"])
    await report_of(http, run_id)
    return run_id


async def result_of(http: httpx.AsyncClient, run_id: str) -> ResearchResult:
    answer = await http.get(f"/v1/runs/{run_id}/report", headers={"Accept": "application/json"})
    return ResearchResult.model_validate(answer.json())


def researcher_saw(stack: ApiStack, marker: str) -> str:
    return "\n".join(
        str(m.get("content"))
        for r in stack.llm.requests
        if r.role in ("researcher", "finding") and marker in json.dumps(r.messages)
        for m in r.messages
    )


async def test_runs_build_a_library_that_only_their_own_tenant_searches(stack: ApiStack) -> None:
    async with await stack.client("shelf-a") as a, await stack.client("shelf-b") as b:
        await upload(a, "kerr-a.md", DOC_A)
        first = await finished(a, f"Shelf A first? [steps=1] [query={QUERY}]")
        assert (await result_of(a, first)).library_error is None
        found = (await a.get("/v1/library/search", params={"q": "kerr ridge"})).json()["passages"]
        assert [p["path"] for p in found] == [f"finding:{first}/s1"]
        assert "Kerr ridge survey (corpus) bears on the step." in found[0]["text"]
        assert "upload:kerr-a.md" in found[0]["text"]

        # Another tenant: its search, and its runs' researchers asked to use the library, find nothing of A's.
        assert (await b.get("/v1/library/search", params={"q": "kerr ridge"})).json()["passages"] == []
        theirs = await finished(b, f"Shelf B? [steps=1] [query={QUERY}]", library=True)
        seen = researcher_saw(stack, "Shelf B?")
        assert "Shelf B?" in seen and "kerr" not in seen.replace(QUERY, "").lower()
        assert (await result_of(b, theirs)).sources == []

        # A's own runs: a plain run does not look in the library; with library=true, or as a follow-up
        # (by default), its researcher is shown the earlier finding from the library.
        plain = await finished(a, f"Shelf A plain? [steps=1] [query={QUERY}]")
        assert "library of earlier runs" not in researcher_saw(stack, "Shelf A plain?")
        asked = await finished(a, f"Shelf A asked? [steps=1] [query={QUERY}]", library=True)
        assert f"finding:{first}/s1" in researcher_saw(stack, "Shelf A asked?")
        follow = await a.post(
            f"/v1/runs/{first}/followup",
            json={"question": f"Shelf A since? [steps=1] [query={QUERY}]", "auto_approve": True},
        )
        later = follow.json()["id"]
        report = await report_of(a, later)
        seen = researcher_saw(stack, "Shelf A since?")
        assert "from the library of earlier runs" in seen and f"finding:{first}/s1" in seen
        cited = (await result_of(a, later)).sources
        assert {s.via for s in cited} == {"corpus", "library"}
        # The earlier run's own conclusion is not new evidence: not a new source of what changed.
        section = report.split("## What changed since", 1)[1]
        assert "finding:" not in section and "Nothing changed" in section

    corpus = SQLiteCorpus(stack.home / "corpus.sqlite3")
    try:
        b_paths = [d.path for d in await corpus.list_documents(library_scope("shelf-b"))]
        a_paths = [d.path for d in await corpus.list_documents(library_scope("shelf-a"))]
    finally:
        await corpus.close()
    assert b_paths == [f"finding:{theirs}/s1"]
    assert sorted(a_paths) == sorted(f"finding:{r}/s1" for r in (first, plain, asked, later))


async def test_the_cli_searches_the_keys_tenants_library(stack: ApiStack, tmp_path: Path) -> None:
    async with await stack.client("shelf-c") as http:
        await upload(http, "kerr-a.md", DOC_A)
        run_id = await finished(http, f"Shelf C? [steps=1] [query={QUERY}]")
    env = {
        **{k: v for k, v in stack.env.items() if not k.startswith(("TEMPORAL_", "CAIRN_"))},
        "CAIRN_API_URL": stack.api.url,
        "CAIRN_HOME": str(tmp_path),
    }
    _, out, _ = await run(
        CAIRN,
        "library",
        "search",
        "kerr ridge",
        "--json",
        env={**env, "CAIRN_API_KEY": await stack.key("shelf-c")},
    )
    assert [p["path"] for p in json.loads(out)["passages"]] == [f"finding:{run_id}/s1"]
    _, out, _ = await run(
        CAIRN, "library", "search", "kerr ridge", env={**env, "CAIRN_API_KEY": await stack.key("shelf-d")}
    )
    assert out.strip() == "Nothing in the library matches 'kerr ridge'."


@pytest.fixture(params=["sqlite", "postgres"])
async def corpus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Corpus]:
    made: Corpus = (
        SQLiteCorpus(tmp_path / "corpus.sqlite3")
        if request.param == "sqlite"
        else PostgresCorpus(request.getfixturevalue("postgres_dsn"))
    )
    yield made
    await made.close()


async def test_a_runs_archive_joins_the_library_whole(corpus: Corpus) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    run_id = f"{tenant}.research-{uuid.uuid4().hex[:6]}"
    url = f"https://bulletin.example/{run_id}"
    long_page = PAGE + "\n\n".join(f"Paragraph {i}: " + "words of the bulletin " * 40 for i in range(12))
    await corpus.ingest(url, "Glacier bulletin", long_page, scope=f"run:{run_id}")
    finding = Finding(
        step_id="s1",
        title="Bulletin",
        summary="The bulletin says the ridge moved.",
        sources=[Source(id="1", title="Glacier bulletin", url=url, via="fetched")],
        claims=[Claim(text="The ridge moved.", source_ids=["1"])],
    )
    added = await ActivityEnvironment().run(
        LibraryActivities(corpus).add,
        LibraryAdd(workflow_id=run_id, tenant=tenant, question="q", findings=[finding]),
    )
    assert (added.pages, added.findings) == (1, 1)
    scope = library_scope(tenant)
    assert await corpus.read_text(scope, url) == await corpus.read_text(f"run:{run_id}", url)
    assert " ".join((await corpus.read_text(scope, url) or "").split()) == " ".join(long_page.split())
    shelved = await corpus.read_text(scope, f"finding:{run_id}/s1")
    assert shelved is not None and "- The ridge moved. [Glacier bulletin (" in shelved
    # Again (a retried activity): nothing new, nothing doubled.
    await ActivityEnvironment().run(
        LibraryActivities(corpus).add, LibraryAdd(workflow_id=run_id, tenant=tenant, findings=[finding])
    )
    assert await corpus.documents(scope) == 2
    with pytest.raises(Exception, match="not a tenant id"):
        await ActivityEnvironment().run(
            LibraryActivities(corpus).add, LibraryAdd(workflow_id=run_id, tenant="../x")
        )
    # A tenant's scopes are found by prefix (how a purge finds its run archives), no other's.
    assert await corpus.scopes(f"run:{tenant}.") == [f"run:{run_id}"]
    assert await corpus.scopes(f"library:{tenant}") == [scope]
    await corpus.drop_scope(scope)
    await corpus.drop_scope(f"run:{run_id}")
    assert await corpus.scopes(f"run:{tenant}.") == []

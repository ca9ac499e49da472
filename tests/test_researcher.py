"""The researcher sub-agent end to end: a LangGraph graph run by the temporalio-langgraph plugin, real
search (SearxNG's JSON API) and real page fetches on loopback, the SQLite and PostgreSQL corpora, the
payload store, citations, budgets and working memory."""

from __future__ import annotations

import pydoc_data.topics
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from activities.corpus import Corpus, PostgresCorpus, SQLiteCorpus
from client.api import CairnClient
from common.config import TemporalConfig
from common.models import Finding, ResearchResult
from common.names import (
    RESEARCHER_ACTIVITIES,
    RESEARCHER_WORKFLOW,
    TOOL_CORPUS_SEARCH,
    TOOL_FETCH_URL,
    TOOL_RECALL,
    TOOL_WEB_SEARCH,
)
from common.plugin import connect
from common.web_config import FetchConfig, SearchConfig
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite, marker
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import llm_config
from tests.helpers import events_of, history, scheduled_activities
from worker import build_worker
from workflows.reporting import cited_numbers
from workflows.researcher.memory import message_tokens

MODEL, FINDING = (f"researcher.{n}" for n in ("model", "finding"))
SEARCH, FETCH, CORPUS, RECALL = (
    f"researcher.{n}" for n in (TOOL_WEB_SEARCH, TOOL_FETCH_URL, TOOL_CORPUS_SEARCH, TOOL_RECALL)
)


@pytest.fixture
def site() -> Iterator[ResearchSite]:
    server = ResearchSite().start()
    yield server
    server.stop()


def web_worker(
    client: Client,
    llm: ScriptedLLM,
    task_queue: str,
    home: Path,
    site: ResearchSite,
    corpus: Corpus,
    **options,
):  # type: ignore[no-untyped-def]
    return build_worker(
        client,
        task_queue,
        llm_config(llm),
        home=home,
        search=SearchConfig(searxng_url=site.url),
        fetch=FetchConfig(allow_private=True),  # The site is on loopback; by default that is refused.
        corpus=corpus,
        **options,
    )


@pytest.fixture
async def web(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, site: ResearchSite
) -> AsyncIterator[CairnClient]:
    async with web_worker(temporal_client, llm, task_queue, tmp_path, site, SQLiteCorpus(tmp_path / "c.db")):
        yield CairnClient(temporal_client, task_queue)


async def children(cairn: CairnClient, workflow_id: str) -> list[str]:
    started = events_of(
        await history(cairn, workflow_id), EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    )
    return [
        e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id for e in started
    ]


def assert_citations_hold(result: ResearchResult, site: ResearchSite, searched_urls: set[str]) -> None:
    """Every [n] names a listed source; every listed source was fetched or searched in this run."""
    cited = cited_numbers(result.report)
    listed = {s.id for s in result.sources}
    assert cited and cited <= listed, (cited, listed)
    assert "## Sources" in result.report
    for source in result.sources:
        assert f"{source.id}. {source.title}" in result.report
        if source.via == "fetched":
            assert source.url in site.fetched()
        elif source.via == "searched":
            assert source.url in searched_urls
        else:
            assert source.via == "corpus" and source.path


async def test_every_model_and_tool_call_is_an_activity_and_the_report_cites_what_was_read(
    web: CairnClient, llm: ScriptedLLM, site: ResearchSite
) -> None:
    wid = await web.start("How do roads age? [steps=2]", auto_approve=True, max_plan_iterations=0)
    result = await web.result(wid)

    steps = await children(web, wid)
    assert len(steps) == 2
    model_calls = 0
    for child in steps:
        hist = await history(web, child)
        assert (
            hist.events[0].workflow_execution_started_event_attributes.workflow_type.name
            == RESEARCHER_WORKFLOW
        )
        names = scheduled_activities(hist)
        assert set(names) <= set(RESEARCHER_ACTIVITIES)
        # One search, two pages read: each tool call its own activity. Three model turns (search, read,
        # done) and the finding.
        assert (names.count(SEARCH), names.count(FETCH)) == (1, 2)
        assert (names.count(MODEL), names.count(FINDING)) == (3, 1)
        model_calls += names.count(MODEL) + names.count(FINDING)
        # Nothing ran inline: no local activities or side effects recorded as markers.
        assert not events_of(hist, EventType.EVENT_TYPE_MARKER_RECORDED)
    assert llm.calls("researcher") + llm.calls("finding") == model_calls
    assert len(site.searched()) == 2 and len(site.fetched()) == 4

    searched = {site.article_url(k) for k in range(1, 5)}
    assert_citations_hold(result, site, searched)
    assert {s.via for s in result.sources} == {"fetched"}
    assert len(result.sources) == 4  # Two pages per step; each step cites both.


async def test_sources_are_deduplicated_across_steps_and_unknown_citations_dropped(
    web: CairnClient, llm: ScriptedLLM, site: ResearchSite
) -> None:
    # Both steps search for the same thing, so both read and cite the same two pages.
    llm.answer_next(
        '{"steps": [{"title": "Look at aspect 1"}, {"title": "Look again at aspect 1"}]}', role="planner"
    )
    llm.answer_next("# Report\n\nRoads age [1] and [2], and also [9] [1, 9].", role="reporter")
    wid = await web.start("Same pages twice", auto_approve=True, max_plan_iterations=0)
    result = await web.result(wid)
    assert [s.url for s in result.sources] == [site.article_url(1), site.article_url(2)]
    assert "[9]" not in result.report and "[1, 9]" not in result.report and "[1]" in result.report
    assert_citations_hold(result, site, set())


async def test_the_corpus_alone_when_no_search_backend_is_configured(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    corpus = SQLiteCorpus(tmp_path / "corpus.db")
    topics = pydoc_data.topics.topics
    for name in sorted(topics)[:60]:
        await corpus.ingest(f"/docs/{name}.txt", name, topics[name])
    async with build_worker(
        temporal_client, task_queue, llm_config(llm), home=tmp_path, search=SearchConfig(), corpus=corpus
    ):
        cairn = CairnClient(temporal_client, task_queue)
        wid = await cairn.start(
            "What does assert do? [steps=1] [query=assert statement AssertionError]",
            auto_approve=True,
            max_plan_iterations=0,
        )
        result = await cairn.result(wid)
    first_request = next(r for r in llm.requests if r.role == "researcher")
    assert first_request.messages  # The model was offered the corpus and no web search:
    names = scheduled_activities(await history(cairn, f"{wid}/s1"))
    assert SEARCH not in names and names.count(CORPUS) == 1
    assert result.sources and all(s.via == "corpus" and s.path for s in result.sources)
    assert result.sources[0].path == "/docs/assert.txt"
    assert cited_numbers(result.report) <= {s.id for s in result.sources}


async def test_budgets_end_research_with_what_it_has(
    web: CairnClient, llm: ScriptedLLM, site: ResearchSite
) -> None:
    wid = await web.start(
        "Budgeted [steps=1]", auto_approve=True, max_plan_iterations=0, researcher_tool_calls=1
    )
    result = await web.result(wid)
    names = scheduled_activities(await history(web, f"{wid}/s1"))
    # The search used the one call the budget allowed; no page was read, and the finding was written.
    assert (names.count(SEARCH), names.count(FETCH), names.count(FINDING)) == (1, 0, 1)
    assert not site.fetched()
    finding = await web.temporal.get_workflow_handle(f"{wid}/s1", result_type=Finding).result()
    assert "tool calls budget ran out" in finding.summary
    assert all(s.via == "searched" for s in result.sources)


async def test_working_memory_stays_in_budget_and_recall_finds_what_it_let_go(
    web: CairnClient, llm: ScriptedLLM, site: ResearchSite
) -> None:
    budget = 1500
    wid = await web.start(
        "Remembering [steps=1] [recall] [query=quillwort survey specimens]",
        auto_approve=True,
        max_plan_iterations=0,
        researcher_context_tokens=budget,
    )
    await web.result(wid)
    turns = [r for r in llm.requests if r.role == "researcher"]
    assert len(turns) == 4  # search, read two pages, recall, done
    for request in turns:
        assert message_tokens(request.messages) <= budget
    # After the pages were read, the search results were cut down to a one-line summary...
    last = turns[-1].messages
    tool_texts = [m.get("content") or "" for m in last if m.get("role") == "tool"]
    assert tool_texts[0].startswith("web search for") and "found [S1], [S2]" in tool_texts[0]
    # ... and recall found both pages' marker sentences in the run's archive of full texts.
    assert marker(1) in tool_texts[-1] and marker(2) in tool_texts[-1]
    assert "pages read earlier in this run" in tool_texts[-1]


async def test_history_stays_small_while_pages_go_to_the_payload_store(
    web: CairnClient, llm: ScriptedLLM, site: ResearchSite, tmp_path: Path
) -> None:
    wid = await web.start(
        "Ten steps of long pages [steps=10]", auto_approve=True, max_plan_iterations=0, max_steps=10
    )
    result = await web.result(wid)
    assert len(site.fetched()) == 20, sorted(site.requests)
    sizes = [
        sum(e.ByteSize() for e in (await history(web, w)).events) for w in [wid, *await children(web, wid)]
    ]
    assert sum(sizes) < 1_000_000, sizes
    page_results = [
        e.activity_task_completed_event_attributes.result.payloads[0]
        for child in await children(web, wid)
        for e in events_of(await history(web, child), EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    ]
    stored = [p for p in page_results if p.external_payloads]
    assert len(stored) >= 20  # Every page (100 KB and more) went to the store, by reference.
    assert all(p.ByteSize() < 1000 for p in stored)
    assert len(result.sources) == 20


async def test_a_replaying_worker_repeats_no_call(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, site: ResearchSite
) -> None:
    # No workflow cache: each workflow task replays the graph from the start of history.
    corpus = SQLiteCorpus(tmp_path / "c.db")
    async with web_worker(temporal_client, llm, task_queue, tmp_path, site, corpus, max_cached_workflows=0):
        cairn = CairnClient(temporal_client, task_queue)
        wid = await cairn.start("Replayed [steps=2]", auto_approve=True, max_plan_iterations=0)
        await cairn.result(wid)
    names = [
        n for child in await children(cairn, wid) for n in scheduled_activities(await history(cairn, child))
    ]
    assert llm.calls("researcher") + llm.calls("finding") == names.count(MODEL) + names.count(FINDING) == 8
    assert len(site.requests) == names.count(SEARCH) + names.count(FETCH) == 6


async def test_postgres_holds_the_corpus_the_archive_and_the_payloads(
    dev_server: DevServer,
    llm: ScriptedLLM,
    task_queue: str,
    tmp_path: Path,
    site: ResearchSite,
    postgres_dsn: str,
) -> None:
    env = {"DATABASE_URL": postgres_dsn, "CAIRN_HOME": str(tmp_path)}
    client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": dev_server.address}), env=env)
    corpus = PostgresCorpus(postgres_dsn)
    async with web_worker(client, llm, task_queue, tmp_path, site, corpus):
        cairn = CairnClient(client, task_queue)
        wid = await cairn.start("Stored in PostgreSQL [steps=1]", auto_approve=True, max_plan_iterations=0)
        result = await cairn.result(wid)
    assert len(result.sources) == 2
    assert await corpus.documents(f"run:{wid}") == 2  # The run's archive: the two pages read.
    async with await psycopg.AsyncConnection.connect(postgres_dsn) as conn:
        count = await (await conn.execute("SELECT count(*) FROM cairn_payloads")).fetchone()
    assert count is not None and count[0] >= 2
    assert not list((tmp_path / "payloads").glob("*/*"))  # Nothing went to files.
    await corpus.drop_scope(f"run:{wid}")
    await corpus.close()


def test_findings_must_cite_known_sources() -> None:
    from activities.researcher.finding import parse_finding

    ok = parse_finding('{"summary": "s", "claims": [{"text": "t", "sources": ["S1"]}]}', ["S1"])
    assert ok == {"summary": "s", "claims": [{"text": "t", "source_ids": ["S1"]}]}
    for bad, problem in (
        ("no json", "no JSON object"),
        ('{"claims": []}', "summary"),
        ('{"summary": "s", "claims": [{"text": "t", "sources": ["S7"]}]}', "S7"),
        ('{"summary": "s", "claims": [{"sources": []}]}', "claims.0"),
    ):
        with pytest.raises(ValueError, match=re.escape(problem)):
            parse_finding(bad, ["S1"])


def test_each_graph_is_compiled_once_and_shared_across_threads() -> None:
    """Runs share one compiled graph per registered graph (compiling was half a step's workflow CPU);
    workflows run on several worker threads at once, and all of them must get that one object."""
    from concurrent.futures import ThreadPoolExecutor
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    from workflows.researcher.graph import compiled

    class State(TypedDict):
        n: int

    def graph() -> StateGraph:
        g: StateGraph = StateGraph(State)
        g.add_node("add", lambda s: {"n": s["n"] + 1})
        g.add_edge(START, "add")
        g.add_edge("add", END)
        return g

    one, other = graph(), graph()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda g: compiled(g), [one] * 16 + [other] * 16))
    assert len({id(c) for c in got[:16]}) == 1 and len({id(c) for c in got[16:]}) == 1
    assert got[0] is not got[16]
    assert got[0].invoke({"n": 1}) == {"n": 2} and got[0].invoke({"n": 5}) == {"n": 6}

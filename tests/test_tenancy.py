"""Tenants keep apart: one tenant's run never finds, cites or writes next to another tenant's things.

Real components throughout: runs on the real Temporal server and worker with the scripted provider
calling `corpus_search` (a tool call because the tool is offered, never keyed on Cairn's prompts), the
corpus in SQLite and in a real PostgreSQL, the real sandbox for a code step, and `cairn ingest` as a
subprocess.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.corpus import Corpus, PostgresCorpus, SQLiteCorpus
from activities.corpus.uploads import UploadRefused, ingest_upload
from activities.fetch import PageFetcher
from activities.llm import LLMActivities
from activities.reports import ReportActivities, report_file_name
from activities.researcher.nodes import ResearcherNodes
from activities.sandbox import SandboxActivities
from activities.sandbox.artifacts import artifact_path, step_directory
from activities.web_search import WebSearch
from common import errors
from common.config import LLMConfig
from common.models import ResearchInput, ResearchResult, SaveReport
from common.names import RESEARCH_WORKFLOW, TOOL_CORPUS_SEARCH
from common.tenancy import corpus_scope
from common.web_config import FetchConfig, SearchConfig
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import CAIRN, cli_env, llm_config
from tests.helpers import run
from tests.sandbox_support import sandbox_test_config
from tests.test_corpus import write_documents
from worker import build_worker
from workflows.researcher.graph import ToolTask

CORPUS_SEARCH = f"researcher.{TOOL_CORPUS_SEARCH}"
QUERY = "zebrafinch quantum lattice"
# Each tenant's own document: acme's and the default tenant's hold the whole query, globex's one word.
ACME_DOC = "# Acme notes\n\nThe zebrafinch quantum lattice calibrates acme's torsion bolometer.\n"
GLOBEX_DOC = "# Globex notes\n\nGlobex keeps its spare parts in a lattice of harbour warehouses.\n"
DEFAULT_DOC = "The default notebook: zebrafinch quantum lattice trials in the cellar.\n"


@dataclass
class Tenants:
    corpus: Corpus
    acme: str
    globex: str
    backend: str


@pytest.fixture(params=["sqlite", "postgres"])
async def tenants(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Tenants]:
    """A store and two tenants. PostgreSQL is one database for the session (or CAIRN_TEST_DATABASE_URL):
    tenants named for this test keep its scopes apart, and the default tenant's scope is never touched."""
    if request.param == "sqlite":
        made = Tenants(SQLiteCorpus(tmp_path / "corpus.sqlite3"), "acme", "globex", "sqlite")
    else:
        suffix = uuid.uuid4().hex[:8]
        corpus = PostgresCorpus(request.getfixturevalue("postgres_dsn"))
        made = Tenants(corpus, f"acme-{suffix}", f"globex-{suffix}", "postgres")
    yield made
    if made.backend == "postgres":
        for tenant in (made.acme, made.globex):
            await made.corpus.drop_scope(corpus_scope(tenant))
    await made.corpus.close()


def walk(value: Any) -> Iterator[dict[str, Any]]:
    """Every dict inside a decoded payload."""
    if isinstance(value, dict):
        yield value
        for inner in value.values():
            yield from walk(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from walk(inner)


async def corpus_searches(
    client: Client, workflow_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The tool tasks the step's `corpus_search` activities were scheduled with, and the results they
    completed with, decoded from the step's history (through the payload store where offloaded)."""
    hist = await client.get_workflow_handle(workflow_id).fetch_history()
    scheduled: set[int] = set()
    tasks, results = [], []
    for event in hist.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            started = event.activity_task_scheduled_event_attributes
            if started.activity_type.name == CORPUS_SEARCH:
                scheduled.add(event.event_id)
                decoded = await client.data_converter.decode(list(started.input.payloads))
                tasks += [d for d in walk(decoded) if "call" in d]
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            if completed.scheduled_event_id in scheduled:
                decoded = await client.data_converter.decode(list(completed.result.payloads))
                results += [d for d in walk(decoded) if d.get("kind") == "passages"]
    return tasks, results


def unescaped(markdown: str) -> str:
    """Markdown with its backslash escapes undone, to read paths in it back."""
    return re.sub(r"\\(.)", r"\1", markdown)


async def research(client: Client, task_queue: str, tenant: str, question: str) -> tuple[str, ResearchResult]:
    wid = f"{tenant}.{uuid.uuid4().hex[:10]}"
    handle = await client.start_workflow(
        RESEARCH_WORKFLOW,
        ResearchInput(question=question, auto_approve=True, max_plan_iterations=0, tenant=tenant),
        id=wid,
        task_queue=task_queue,
        result_type=ResearchResult,
    )
    return wid, await handle.result()


# --- The key proof: a run searches and cites its own tenant's documents only --------------------------


async def test_a_run_finds_and_cites_only_its_own_tenants_documents(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, tenants: Tenants
) -> None:
    corpus, acme, globex = tenants.corpus, tenants.acme, tenants.globex
    await ingest_upload(corpus, acme, "acme-notes.md", ACME_DOC.encode())
    await ingest_upload(corpus, globex, "globex-notes.md", GLOBEX_DOC.encode())
    runs = [acme, globex]
    if tenants.backend == "sqlite":  # A database of this test's own: the default tenant's scope too.
        await ingest_upload(corpus, "default", "default-notes.txt", DEFAULT_DOC.encode())
        runs.append("default")
    texts = {acme: "bolometer", globex: "warehouses", "default": "cellar"}
    paths = {
        acme: "upload:acme-notes.md",
        globex: "upload:globex-notes.md",
        "default": "upload:default-notes.txt",
    }

    # No web search configured: the provider is offered corpus_search first and calls it.
    async with build_worker(
        temporal_client, task_queue, llm_config(llm), home=tmp_path, search=SearchConfig(), corpus=corpus
    ):
        done = await asyncio.gather(
            *(
                research(
                    temporal_client, task_queue, tenant, f"What is it at {tenant}? [steps=1] [query={QUERY}]"
                )
                for tenant in runs
            )
        )

    for tenant, (wid, result) in zip(runs, done, strict=True):
        others = [t for t in runs if t != tenant]
        tasks, results = await corpus_searches(temporal_client, f"{wid}/s1")
        # The workflow chose the scope from the run's tenant; the model named none.
        assert [t["corpus"] for t in tasks] == [corpus_scope(tenant)]
        found = [p for r in results for p in r["passages"]]
        assert {p["path"] for p in found} == {paths[tenant]}, (tenant, found)
        assert not any(texts[o] in p["text"] for o in others for p in found)
        # What the model was shown, the finding's sources and the report: nothing of another tenant's.
        shown = " ".join(
            str(m.get("content"))
            for r in llm.requests
            if r.role in ("researcher", "finding") and f"at {tenant}?" in json.dumps(r.messages)
            for m in r.messages
        )
        assert texts[tenant] in shown and not any(texts[o] in shown for o in others)
        assert [s.path for s in result.sources] == [paths[tenant]]
        report = unescaped(result.report)
        assert paths[tenant] in report  # Cited in the report's sources, as a control...
        assert all(paths[o] not in report and texts[o] not in report for o in others)  # ...and no other.
        # The report is kept in the tenant's own directory; the default tenant's where it always was.
        where = tmp_path / "reports" / ("" if tenant == "default" else f"tenants/{tenant}")
        assert result.report_path == str(where / report_file_name(wid))
        assert Path(result.report_path).read_text(encoding="utf-8") == result.report


async def test_a_tool_task_from_before_tenants_searches_the_default_corpus(tmp_path: Path) -> None:
    corpus = SQLiteCorpus(tmp_path / "corpus.sqlite3")
    await ingest_upload(corpus, "default", "default-notes.txt", DEFAULT_DOC.encode())
    await ingest_upload(corpus, "acme", "acme-notes.md", ACME_DOC.encode())
    nodes = ResearcherNodes(
        LLMActivities(LLMConfig(api_key=None, base_url=None)),
        WebSearch(SearchConfig()),
        PageFetcher(FetchConfig()),
        corpus,
    )
    env = ActivityEnvironment()
    call = {"id": "c1", "name": TOOL_CORPUS_SEARCH, "args": {"query": QUERY}}

    async def paths_found(task: dict[str, Any]) -> set[str]:
        update = await env.run(nodes.corpus_search, cast(ToolTask, task))
        return {p["path"] for p in update["messages"][0]["result"]["passages"]}

    # A task recorded before tasks carried a corpus: the default tenant's documents, as then.
    assert await paths_found({"call": call, "scope": ""}) == {"upload:default-notes.txt"}
    assert await paths_found({"call": call, "scope": "", "corpus": "corpus:acme"}) == {"upload:acme-notes.md"}
    # Only a tenant's documents are ever searched by corpus_search, never a run's archive.
    with pytest.raises(ApplicationError) as refused:
        await env.run(nodes.corpus_search, ToolTask(call=call, scope="", corpus="run:someone"))
    assert refused.value.type == errors.INVALID_INPUT and refused.value.non_retryable


# --- Reports ------------------------------------------------------------------------------------------


async def test_reports_are_kept_per_tenant_idempotently(tmp_path: Path) -> None:
    reports = ReportActivities(tmp_path / "reports")
    env = ActivityEnvironment()
    for tenant, where in (("default", tmp_path / "reports"), ("acme", tmp_path / "reports/tenants/acme")):
        request = SaveReport(workflow_id=f"{tenant}.run-1", markdown=f"# {tenant}\n", tenant=tenant)
        first = await env.run(reports.save, request)
        again = await env.run(reports.save, request)  # A retried activity: the same one file.
        assert first.path == again.path == str(where / report_file_name(f"{tenant}.run-1"))
        assert sorted(p.name for p in where.glob("*.md*")) == [report_file_name(f"{tenant}.run-1")]
    # A report saved before tenants (no tenant in its request) lands where it always did.
    old = SaveReport.model_validate({"workflow_id": "research-old", "markdown": "# old\n"})
    assert (await env.run(reports.save, old)).path == str(
        tmp_path / "reports" / report_file_name("research-old")
    )
    with pytest.raises(ApplicationError) as refused:
        await env.run(reports.save, SaveReport(workflow_id="x", markdown="x", tenant="../etc"))
    assert refused.value.type == errors.INVALID_INPUT and refused.value.non_retryable
    assert not (tmp_path / "etc").exists()


# --- Artifacts ----------------------------------------------------------------------------------------


async def test_a_code_steps_artifacts_land_in_its_tenants_directory(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, sandbox_image: str
) -> None:
    llm.answer_next(json.dumps({"steps": [{"title": "Compute the squares", "kind": "code"}]}), role="planner")
    sandbox = SandboxActivities(sandbox_test_config(tmp_path))
    try:
        async with build_worker(temporal_client, task_queue, llm_config(llm), home=tmp_path, sandbox=sandbox):
            wid, result = await research(temporal_client, task_queue, "acme", "Squares?")
    finally:
        await sandbox.close()
    root = tmp_path / "artifacts"
    step_dir = root / "tenants" / "acme" / wid / "s1"
    assert sorted(p.name for p in step_dir.iterdir()) == ["squares.csv", "squares.png"]
    assert (
        sorted(p.relative_to(root).parts[:2] for p in root.rglob("*") if p.is_file())
        == [("tenants", "acme")] * 2
    )
    # The report links the tenant's copy (markdown: its backslash escapes undone to read the path).
    assert str(step_dir / "squares.csv") in unescaped(result.report)
    assert artifact_path(root, "acme", wid, "squares.csv") == step_dir.resolve() / "squares.csv"
    assert artifact_path(root, "acme", wid, "squares.png", step="s1") == step_dir.resolve() / "squares.png"
    assert artifact_path(root, "globex", wid, "squares.csv") is None
    assert artifact_path(root, "default", wid, "squares.csv") is None


def test_artifact_path_refuses_everything_but_the_runs_own_files(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    mine = step_directory(root, "acme", "acme.run-1", "s1")
    (mine / "tables").mkdir(parents=True)
    (mine / "chart.png").write_bytes(b"\x89PNG mine")
    (mine / "tables" / "summary.csv").write_text("a,b\n")
    later = step_directory(root, "acme", "acme.run-1", "s2")
    later.mkdir(parents=True)
    (later / "late.txt").write_text("from step 2")
    other_run = step_directory(root, "acme", "acme.run-2", "s1")
    other_run.mkdir(parents=True)
    (other_run / "secret.csv").write_text("another run's")
    other_tenant = step_directory(root, "globex", "globex.run-1", "s1")
    other_tenant.mkdir(parents=True)
    (other_tenant / "secret.csv").write_text("another tenant's")
    default_run = step_directory(root, "default", "research-1", "s1")
    default_run.mkdir(parents=True)
    (default_run / "old.csv").write_text("the default tenant's")
    assert default_run == root / "research-1" / "s1"  # The default tenant's layout has no tenant part.
    assert SandboxActivities(sandbox_test_config(tmp_path)).artifacts_dir("acme.run-1", "s1", "acme") == mine

    def found(name: str, *, tenant: str = "acme", run_id: str = "acme.run-1", **kw: str) -> Path | None:
        return artifact_path(root, tenant, run_id, name, **kw)

    assert found("chart.png") == mine.resolve() / "chart.png"
    assert found("tables/summary.csv") == mine.resolve() / "tables" / "summary.csv"
    assert found("late.txt") == later.resolve() / "late.txt"  # Every step's directory is looked in.
    assert found("late.txt", step="s1") is None and found("late.txt", step="s2") is not None
    assert found("research-1/s1/old.csv", tenant="default", run_id="..") is None  # An id cannot climb.
    refused = [
        "../acme.run-2/s1/secret.csv",
        "../../globex/globex.run-1/s1/secret.csv",
        "tables/../chart.png",
        "./chart.png",
        str(mine / "chart.png"),  # absolute
        "/etc/passwd",
        "tables\\summary.csv",
        "tables//summary.csv",
        "tables",  # a directory, not a file
        "secret.csv",  # another run's, and another tenant's
        "",
        "chart.png\x00",
    ]
    for name in refused:
        assert found(name) is None, name
    assert found("secret.csv", run_id="acme.run-2") is not None  # ...which its own run finds.
    assert found("chart.png", tenant="globex") is None and found("chart.png", tenant="default") is None
    # A default-tenant run's id never reaches into the tenants' directory or the CLI's.
    assert found("acme/acme.run-1/s1/chart.png", tenant="default", run_id="tenants") is None
    assert found("acme.run-1/s1/chart.png", tenant="default", run_id="tenants/acme") is None
    assert step_directory(root, "default", "tenants", "s1").parent.name.startswith("tenants-")
    assert step_directory(root, "default", "CLI", "s1").parent.name.startswith("CLI-")
    # No symlink is followed, however it got there.
    (mine / "link.csv").symlink_to(other_tenant / "secret.csv")
    (mine.parent / "s9").symlink_to(other_tenant, target_is_directory=True)
    assert found("link.csv") is None and found("secret.csv", step="s9") is None
    with pytest.raises(ValueError, match="not a tenant id"):
        found("chart.png", tenant="Acme")


# --- Uploads and listings -----------------------------------------------------------------------------


async def test_uploads_follow_cairn_ingests_rules_into_the_tenants_corpus(
    tenants: Tenants, tmp_path: Path
) -> None:
    corpus, acme, globex = tenants.corpus, tenants.acme, tenants.globex
    files = write_documents(tmp_path / "docs")
    for kind in ("md", "txt", "pdf", "html"):
        report = await ingest_upload(corpus, acme, files[kind].name, files[kind].read_bytes())
        assert report.path == f"upload:{files[kind].name}" and report.passages > 0 and report.error is None
    # A client's directories are not kept: the name alone is the document's.
    report = await ingest_upload(corpus, globex, "C:\\Users\\me\\..\\notes.md", GLOBEX_DOC.encode())
    assert report.path == "upload:notes.md"
    again = await ingest_upload(corpus, globex, "elsewhere/notes.md", GLOBEX_DOC.encode())
    assert again.unchanged and again.path == "upload:notes.md"

    refused = [
        ("true.txt", Path("/bin/true").read_bytes(), "not_its_format", "an ELF executable"),
        ("noise.md", random.Random(7).randbytes(4096), "not_its_format", "binary data"),
        ("fake.pdf", b"just text", "not_its_format", "does not start with %PDF"),
        ("zip.html", b"PK\x03\x04 a docx by another name", "not_its_format", "ZIP archive"),
        ("report.docx", b"PK\x03\x04", "unsupported", "unsupported suffix '.docx'"),
        ("", b"text", "no_name", "no file name"),
        ("dir/", b"text", "no_name", "no file name"),
        ("..", b"text", "no_name", "no file name"),
    ]
    for name, data, reason, says in refused:
        with pytest.raises(UploadRefused) as refusal:
            await ingest_upload(corpus, acme, name, data)
        assert refusal.value.reason == reason and says in str(refusal.value), (name, refusal.value)
    with pytest.raises(UploadRefused) as large:
        await ingest_upload(corpus, acme, "big.txt", b"x" * 101, max_bytes=100)
    assert large.value.reason == "too_large" and "over the cap of 100 bytes" in str(large.value)
    assert (await ingest_upload(corpus, acme, "small.txt", b"x" * 100, max_bytes=100)).passages == 1
    with pytest.raises(ValueError, match="not a tenant id"):
        await ingest_upload(corpus, "Not A Tenant", "a.txt", b"text")

    listed = await corpus.list_documents(corpus_scope(acme))
    names = sorted([*(f"upload:{files[k].name}" for k in ("md", "txt", "pdf", "html")), "upload:small.txt"])
    assert [d.path for d in listed] == names  # Nothing refused was stored.
    assert all(d.passages > 0 and len(d.sha256) == 64 and d.ingested_at is not None for d in listed)
    assert [d.title for d in listed if d.path.endswith(".pdf")] == ["The assert statement"]
    assert [d.path for d in await corpus.list_documents(corpus_scope(globex))] == ["upload:notes.md"]
    page = await corpus.list_documents(corpus_scope(acme), limit=3)
    rest = await corpus.list_documents(corpus_scope(acme), after=page[-1].path)
    assert [d.path for d in page + rest] == names
    assert await corpus.search("nonlocal statement", scope=corpus_scope(globex)) == []


async def test_a_document_reads_back_whole_and_only_in_its_own_tenants_scope(tenants: Tenants) -> None:
    corpus, acme, globex = tenants.corpus, tenants.acme, tenants.globex
    paragraphs = [f"Paragraph {n}: " + " ".join(f"word{n}x{i}" for i in range(120)) for n in range(12)]
    text = "\n\n".join(paragraphs) + "\n"
    await corpus.ingest("upload:long.md", "Long notes", text, scope=corpus_scope(acme))
    stored = await corpus.read_document(corpus_scope(acme), "upload:long.md")
    assert stored is not None and stored.document.title == "Long notes"
    assert len(stored.passages) == stored.document.passages > 1
    assert [p.position for p in stored.passages] == list(range(len(stored.passages)))
    # Each passage is the text where it says it sits, and together they hold every word, in order.
    assert all(text[p.char_offset : p.char_offset + len(p.text)] == p.text for p in stored.passages)
    assert " ".join(p.text for p in stored.passages).split() == text.split()
    # Another tenant, and a path that is not there, read nothing.
    assert await corpus.read_document(corpus_scope(globex), "upload:long.md") is None
    assert await corpus.read_document(corpus_scope(acme), "upload:other.md") is None
    # A new version replaces the old one whole.
    await corpus.ingest("upload:long.md", "Short notes", "Only this now.", scope=corpus_scope(acme))
    again = await corpus.read_document(corpus_scope(acme), "upload:long.md")
    assert again is not None and again.document.title == "Short notes"
    assert [p.text for p in again.passages] == ["Only this now."]


# --- The CLI ------------------------------------------------------------------------------------------


async def test_cairn_ingest_tenant_ingests_and_searches_that_tenants_corpus(tmp_path: Path) -> None:
    (tmp_path / "acme-notes.md").write_text(ACME_DOC, encoding="utf-8")
    env = {k: v for k, v in cli_env(CAIRN_HOME=str(tmp_path / "home")).items() if k != "DATABASE_URL"}
    _, out, _ = await run(CAIRN, "ingest", "--tenant", "acme", str(tmp_path / "acme-notes.md"), env=env)
    assert "1 ingested" in out
    with closing(sqlite3.connect(tmp_path / "home" / "corpus.sqlite3")) as conn:
        stored = conn.execute("SELECT scope, path FROM documents").fetchall()
    assert stored == [("corpus:acme", str(tmp_path / "acme-notes.md"))]

    async def search(*tenant: str) -> list[str]:
        _, out, _ = await run(CAIRN, "ingest", "--search", QUERY, *tenant, "--json", env=env)
        return [p["path"] for p in json.loads(out)["passages"]]

    assert await search("--tenant", "acme") == [str(tmp_path / "acme-notes.md")]
    assert await search() == [] and await search("--tenant", "globex") == []
    code, _, err = await run(CAIRN, "ingest", "--tenant", "Acme_Corp", str(tmp_path), env=env, check=False)
    assert code == 2 and "not a tenant id" in err

"""The corpus against the real stores (SQLite FTS5, and a real PostgreSQL) over a corpus no one here wrote:
CPython's own `pydoc_data.topics`, written out as files. Every store test runs on both backends."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sqlite3
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pypdf import PdfReader
from temporalio.exceptions import ApplicationError

from activities.corpus import Corpus, PostgresCorpus, SQLiteCorpus, open_corpus
from activities.corpus.documents import (
    MAX_BYTES,
    MAX_CHARS,
    MIN_CHARS,
    NotADocument,
    iter_documents,
    read_document,
    split_passages,
)
from common.tool_models import CorpusResults
from testkit.dev_server import free_port
from tests.conftest import CAIRN, cli_env
from tests.helpers import run

PHRASE = "nearest enclosing scope excluding globals"  # From the "nonlocal" statement's topic.


@dataclass
class Store:
    corpus: Corpus
    scope: str
    backend: str
    dsn: str = ""


@pytest.fixture(scope="session")
def topics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("topics")
    for name, text in topics.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        made = Store(SQLiteCorpus(tmp_path / "corpus.sqlite3"), "corpus", "sqlite")
    else:
        # One database for the session: a scope of its own keeps each test's statistics apart.
        dsn = request.getfixturevalue("postgres_dsn")
        made = Store(PostgresCorpus(dsn), f"test:{uuid.uuid4().hex[:12]}", "postgres", dsn)
    yield made
    for scope in (made.scope, made.scope + ":other"):
        await made.corpus.drop_scope(scope)
    await made.corpus.close()


async def ingest_files(store: Store, paths: list[Path], scope: str | None = None) -> None:
    async def one(path: Path) -> None:
        title, text = await asyncio.to_thread(read_document, path)
        report = await store.corpus.ingest(str(path), title or path.stem, text, scope=scope or store.scope)
        assert report.passages == len(split_passages(text)) and not report.replaced and not report.unchanged

    # All at once: the store must take concurrent writers (SQLite threads, PostgreSQL connections).
    await asyncio.gather(*(one(path) for path in paths))


@pytest.fixture
async def ingested(store: Store, topics_dir: Path) -> Store:
    await ingest_files(store, sorted(topics_dir.glob("*.txt")))
    assert await store.corpus.documents(store.scope) == len(topics)
    return store


async def test_a_distinctive_phrase_finds_its_document_first(ingested: Store, topics_dir: Path) -> None:
    hits = await ingested.corpus.search(PHRASE, scope=ingested.scope)
    assert hits[0].path == str(topics_dir / "nonlocal.txt") and hits[0].title == "nonlocal"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[0].score > 0
    # Deep inside a long document: position and char_offset point at the very text, in the file.
    hits = await ingested.corpus.search("__length_hint__ estimated length", limit=3, scope=ingested.scope)
    top = hits[0]
    text = Path(top.path).read_text(encoding="utf-8")
    assert top.position > 0 and top.char_offset > 0
    assert text[top.char_offset : top.char_offset + len(top.text)] == top.text
    assert "__length_hint__" in top.text and "estimated length" in top.text
    for hit in await ingested.corpus.search(PHRASE, limit=10, scope=ingested.scope):
        source = Path(hit.path).read_text(encoding="utf-8")
        assert source[hit.char_offset : hit.char_offset + len(hit.text)] == hit.text
        assert split_passages(source)[hit.position] == (hit.char_offset, hit.text)


HOSTILE = ['"foo" AND (bar', "-", "NEAR(", "'; DROP TABLE documents; --", "🦜🙂", "a:b* OR ^c", "x\\y & !z | <->",
           "\x00", "naïve 日本語 ÆØÅ", "(((", "", "   ", '"', "*", "NOT", "col:term", "the and of"]  # fmt: skip


async def test_hostile_queries_never_raise(ingested: Store) -> None:
    """An LLM writes the queries: nothing in one may reach a query parser as syntax."""
    for query in HOSTILE:
        hits = await ingested.corpus.search(query, scope=ingested.scope)
        assert isinstance(hits, list), query
        if not any(ch.isalnum() for ch in query):
            assert hits == [], query
    assert [h.title for h in await ingested.corpus.search('"nonlocal" AND (', scope=ingested.scope)][:1] == [
        "nonlocal"
    ]
    assert await ingested.corpus.documents(ingested.scope) == len(topics)  # Nothing was dropped.


async def test_reingesting_a_changed_file_replaces_its_passages(store: Store, tmp_path: Path) -> None:
    path = str(tmp_path / "notes.txt")
    first = "Field notes.\n\nThe quokkaword appears here once, with some words around it."
    report = await store.corpus.ingest(path, "notes", first, scope=store.scope)
    assert report.passages == 1 and not report.replaced
    assert [h.path for h in await store.corpus.search("quokkaword", scope=store.scope)] == [path]

    paragraph = "A wallabyword paragraph, long enough to need room of its own in a passage. " * 6
    second = "\n\n".join(f"{n}. {paragraph}" for n in range(8))
    report = await store.corpus.ingest(path, "notes", second, scope=store.scope)
    assert report.replaced and report.passages == len(split_passages(second)) > 2
    assert await store.corpus.search("quokkaword", scope=store.scope) == []
    hits = await store.corpus.search("wallabyword", limit=50, scope=store.scope)
    assert sorted(h.position for h in hits) == list(range(report.passages))
    assert {h.path for h in hits} == {path} and await store.corpus.documents(store.scope) == 1


async def test_a_replaced_document_ranks_as_if_ingested_fresh(store: Store, topics_dir: Path) -> None:
    """Replacement keeps BM25's statistics exact: the same scores as a scope that never saw the old text."""
    names = ["nonlocal", "global", "naming", "execmodel", "assignment"]
    paths = [topics_dir / f"{name}.txt" for name in names]
    await ingest_files(store, paths)
    changed = topics["global"].replace("global", "worldwide")
    await store.corpus.ingest(str(paths[1]), "global", changed, scope=store.scope)
    fresh = store.scope + ":other"
    await ingest_files(store, [p for p in paths if p != paths[1]], scope=fresh)
    await store.corpus.ingest(str(paths[1]), "global", changed, scope=fresh)
    for query in (PHRASE, "worldwide statement names", "global binding"):
        replaced = await store.corpus.search(query, limit=20, scope=store.scope)
        direct = await store.corpus.search(query, limit=20, scope=fresh)
        assert [(h.path, h.position) for h in replaced] == [(h.path, h.position) for h in direct]
        assert [h.score for h in replaced] == pytest.approx([h.score for h in direct])


async def _write_marker(store: Store, path: str) -> tuple[object, ...]:
    """Something that changes whenever the store commits a write for `path`."""
    if store.backend == "sqlite":
        assert isinstance(store.corpus, SQLiteCorpus)
        with closing(sqlite3.connect(store.corpus.db_path)) as conn:
            return tuple(
                conn.execute("SELECT max(id), count(*), sum(position) FROM passages").fetchone()
            ) + tuple(
                conn.execute("SELECT rowid, ingested_at FROM documents WHERE path = ?", (path,)).fetchone()
            )
    async with await psycopg.AsyncConnection.connect(store.dsn) as conn:
        cur = await conn.execute(
            "SELECT d.xmin::text, (SELECT max(id) FROM cairn_corpus_passages), "
            "(SELECT xmin::text FROM cairn_corpus_scopes WHERE scope = d.scope) "
            "FROM cairn_corpus_documents d WHERE d.scope = %s AND d.path = %s",
            (store.scope, path),
        )
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)


async def test_an_unchanged_reingest_writes_nothing(store: Store, topics_dir: Path) -> None:
    path = topics_dir / "with.txt"
    await ingest_files(store, [path])
    before = await _write_marker(store, str(path))
    title, text = read_document(path)
    report = await store.corpus.ingest(str(path), title or "with", text, scope=store.scope)
    assert report.unchanged and not report.replaced and report.passages == len(split_passages(text))
    assert await _write_marker(store, str(path)) == before


async def test_scopes_are_separate(store: Store, topics_dir: Path) -> None:
    other = store.scope + ":other"  # Like a run's archive next to the person's corpus.
    await ingest_files(store, [topics_dir / "nonlocal.txt"])
    await ingest_files(store, [topics_dir / "assert.txt"], scope=other)
    assert [h.title for h in await store.corpus.search("nonlocal assert", scope=store.scope)] == ["nonlocal"]
    assert [h.title for h in await store.corpus.search("nonlocal assert", scope=other)] == ["assert"]
    assert await store.corpus.documents(other) == 1
    await store.corpus.drop_scope(other)
    assert await store.corpus.search("assert", scope=other) == [] and await store.corpus.documents(other) == 0
    assert await store.corpus.search("nonlocal", scope=store.scope) != []
    assert await store.corpus.search("anything", scope="never-used") == []


async def test_bm25_weighs_term_frequency_and_rarity(store: Store) -> None:
    filler = "The river ran past the mill and the meadow, under a bridge of grey stone. "

    async def put(name: str, text: str) -> None:
        await store.corpus.ingest(f"/bm25/{name}.txt", name, text, scope=store.scope)

    # Same lengths throughout, so only term frequency and document frequency differ.
    await put("many", filler * 2 + "xylophone " * 5)
    await put("once", filler * 2 + "xylophone banana banana banana banana")
    for n in range(6):
        await put(f"plain{n}", filler * 2 + "orange melon melon melon melon")
    hits = await store.corpus.search("xylophone", scope=store.scope)
    assert [h.title for h in hits] == ["many", "once"] and hits[0].score > hits[1].score > 0
    # "river" is in every document, "banana" in one: the rare term carries the query.
    hits = await store.corpus.search("river banana", scope=store.scope)
    assert hits[0].title == "once"
    scores = {
        h.title: h.score for h in await store.corpus.search("river banana", limit=10, scope=store.scope)
    }
    assert scores["once"] > 2 * scores["plain0"]


async def test_postgres_schema_creation_survives_racing_workers(postgres_dsn: str) -> None:
    schema = f"race_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            dsn = make_conninfo(postgres_dsn, options=f"-c search_path={schema}")
            workers = [PostgresCorpus(dsn) for _ in range(4)]
            reports = await asyncio.gather(
                *(
                    w.ingest(f"/race/{i}.txt", str(i), topics["nonlocal"], scope="race")
                    for i, w in enumerate(workers)
                )
            )
            assert all(r.passages > 0 for r in reports)
            assert len(await workers[0].search("nonlocal", limit=10, scope="race")) == sum(
                r.passages for r in reports
            )
            for worker in workers:
                await worker.close()
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")


async def test_an_unreachable_store_is_a_retryable_failure_without_secrets(tmp_path: Path) -> None:
    corpus = PostgresCorpus(f"postgresql://cairn:hunter2-sentinel@127.0.0.1:{free_port()}/corpus")
    with pytest.raises(ApplicationError) as caught:
        await corpus.search("anything")
    assert caught.value.type == "CorpusUnavailable" and not caught.value.non_retryable
    assert "PostgreSQL" in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert "hunter2" not in str(caught.value) and caught.value.__cause__ is None
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ApplicationError) as caught:
        await SQLiteCorpus(tmp_path / "file" / "corpus.sqlite3").ingest("/x.txt", "x", "text")
    assert caught.value.type == "CorpusUnavailable" and "SQLite" in str(caught.value)


def test_open_corpus_picks_the_store_from_the_environment(tmp_path: Path, postgres_dsn: str) -> None:
    corpus = open_corpus({"CAIRN_HOME": str(tmp_path)})
    assert isinstance(corpus, SQLiteCorpus) and corpus.db_path == tmp_path / "corpus.sqlite3"
    assert isinstance(
        open_corpus({"CAIRN_HOME": str(tmp_path), "DATABASE_URL": postgres_dsn}), PostgresCorpus
    )


# --- Reading documents -------------------------------------------------------------------------------


def test_passages_are_exact_slices_of_a_size_to_read() -> None:
    sizes = []
    for text in topics.values():
        pieces = split_passages(text)
        assert "".join(text.split()) == "".join("".join(p.split()) for _, p in pieces)  # No word lost.
        for offset, passage in pieces:
            assert text[offset : offset + len(passage)] == passage and passage == passage.strip()
            sizes.append(len(passage))
    assert max(sizes) <= MAX_CHARS
    assert sum(MIN_CHARS // 2 <= size for size in sizes) > 0.9 * len(sizes)


def _pdf(title: str, pages: list[list[str]]) -> bytes:
    """A minimal, valid PDF (Helvetica text, one content stream per page) with a title in its metadata."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    first_page = 5
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (" ".join(f"{first_page + 2 * i} 0 R" for i in range(len(pages))).encode(), len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Title ({escape(title)}) /Producer (Cairn tests) >>".encode(),
    ]
    for i, lines in enumerate(pages):
        stream = (
            "BT /F1 11 Tf 72 720 Td 14 TL " + " ".join(f"({escape(line)}) Tj T*" for line in lines) + " ET"
        )
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {first_page + 2 * i + 1} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def _html(title: str, body: str) -> str:
    paragraphs = "".join(f"<p>{p}</p>\n" for p in body.split("\n\n") if p.strip())
    return (
        f"<!doctype html><html><head><title>{title}</title><script>var tracking = 'SCRIPTTEXT';</script>"
        "<style>body { color: red }</style></head><body><nav><a href='/'>Home</a> | <a href='/x'>Index</a></nav>"
        f"<article><h1>{title}</h1>\n{paragraphs}</article><footer>Copyright footer text</footer></body></html>"
    )


def write_documents(folder: Path) -> dict[str, Path]:
    """One of each supported kind, from the CPython docs."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [line for line in topics["assert"].splitlines() if line.strip() and "*" not in line][:12]
    files = {
        "md": folder / "nonlocal.md",
        "html": folder / "sub" / "with.html",
        "pdf": folder / "assert.pdf",
        "txt": folder / "global.txt",
    }
    files["html"].parent.mkdir(exist_ok=True)
    files["md"].write_text("# The nonlocal statement\n\n" + topics["nonlocal"], encoding="utf-8")
    files["html"].write_text(_html("The with statement", topics["with"]), encoding="utf-8")
    files["pdf"].write_bytes(_pdf("The assert statement", [lines[:6], lines[6:]]))
    files["txt"].write_text(topics["global"], encoding="utf-8")
    return files


def test_read_document_reads_each_kind(tmp_path: Path) -> None:
    files = write_documents(tmp_path)
    title, text = read_document(files["md"])
    assert title == "The nonlocal statement" and PHRASE.split()[-1] in text
    title, text = read_document(files["html"])
    assert title == "The with statement" and "context manager" in text
    assert "SCRIPTTEXT" not in text and "color: red" not in text
    assert len(PdfReader(files["pdf"], strict=True).pages) == 2  # A valid PDF, not one pypdf tolerates.
    title, text = read_document(files["pdf"])
    assert title == "The assert statement"
    assert "debugging assertions" in text and "__debug__" in text  # From both pages.
    title, text = read_document(files["txt"])
    assert title == "" and text == topics["global"]
    (tmp_path / "report.docx").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"'\.docx'.*\.pdf"):
        read_document(tmp_path / "report.docx")


def test_iter_documents_recurses_and_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    files = write_documents(tmp_path / "docs")
    (tmp_path / "docs" / ".hidden").mkdir()
    (tmp_path / "docs" / ".hidden" / "secret.txt").write_text("hidden")
    (tmp_path / "docs" / ".draft.md").write_text("hidden")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    assert list(iter_documents([tmp_path / "docs"])) == sorted(files.values())
    with pytest.raises(ValueError, match="unsupported"):
        list(iter_documents([tmp_path / "docs" / "image.png"]))
    with pytest.raises(FileNotFoundError):
        list(iter_documents([tmp_path / "missing"]))


# --- The `cairn ingest` command ----------------------------------------------------------------------


async def test_cairn_ingest_end_to_end(tmp_path: Path, topics_dir: Path) -> None:
    docs = tmp_path / "docs"
    files = write_documents(docs)
    # The embedded default: no DATABASE_URL, whatever the test process has.
    env = {k: v for k, v in cli_env(CAIRN_HOME=str(tmp_path / "home")).items() if k != "DATABASE_URL"}
    missing = tmp_path / "missing.txt"
    code, out, err = await run(
        CAIRN, "ingest", str(docs), str(missing), str(topics_dir), env=env, check=False
    )
    assert code == 2 and f"{missing}: no such file or directory" in err, err
    assert out.count("ingested  ") == len(files) + len(topics), out
    total = len(files) + len(topics)
    assert f"{total} documents: {total} ingested, 0 replaced, 0 unchanged, 0 failed" in out
    assert (tmp_path / "home" / "corpus.sqlite3").exists()

    files["txt"].write_text("A worldwide statement, now.", encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 not really a PDF")
    code, out, err = await run(CAIRN, "ingest", str(docs), "--json", env=env, check=False)
    assert code == 1, err
    reports = {Path(r["path"]).name: r for r in json.loads(out)}
    assert reports["global.txt"]["replaced"] and reports["global.txt"]["passages"] == 1
    assert reports["nonlocal.md"]["unchanged"] and reports["with.html"]["unchanged"]
    assert reports["broken.pdf"]["error"] and reports["broken.pdf"]["passages"] == 0

    _, out, _ = await run(CAIRN, "ingest", "--search", PHRASE, "--json", env=env)
    results = CorpusResults.model_validate_json(out)
    assert results.passages[0].path in {str(files["md"]), str(topics_dir / "nonlocal.txt")}
    _, out, _ = await run(CAIRN, "ingest", "--search", "worldwide", env=env)
    assert str(files["txt"]) in out and "A worldwide statement" in out

    (docs / "image.png").write_bytes(b"\x89PNG")
    code, _, err = await run(CAIRN, "ingest", str(docs / "image.png"), env=env, check=False)
    assert code == 2 and "supported: .txt" in err
    code, _, err = await run(CAIRN, "ingest", env=env, check=False)
    assert code == 2 and "PATH" in err


async def test_cairn_ingest_names_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("some text")
    dsn = f"postgresql://cairn:hunter2-sentinel@127.0.0.1:{free_port()}/corpus"
    code, out, err = await run(
        CAIRN, "ingest", str(tmp_path / "a.txt"), env=cli_env(DATABASE_URL=dsn), check=False
    )
    assert (
        code == 1
        and out == ""
        and "CorpusUnavailable" in err
        and "PostgreSQL corpus at cairn@127.0.0.1" in err
    )
    assert "hunter2" not in out + err


# --- What is not a document --------------------------------------------------------------------------


def not_documents(folder: Path) -> dict[str, Path]:
    """Files a red team named as documents: none of them is one, whatever its suffix says."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "fifo": folder / "pipe.md",
        "device": folder / "zero.txt",
        "sparse": folder / "sparse.txt",
        "random": folder / "random.md",
        "elf": folder / "true.txt",
        "zip": folder / "notes.html",
        "fake_pdf": folder / "fake.pdf",
        "controls": folder / "controls.txt",
        "latin1": folder / "latin1.md",
    }
    os.mkfifo(files["fifo"])
    files["device"].symlink_to("/dev/zero")
    with files["sparse"].open("wb") as sparse:
        sparse.truncate(MAX_BYTES + 1)  # Past the cap, and not a byte of it on disk.
    files["random"].write_bytes(random.Random(7).randbytes(64 * 1024))
    shutil.copyfile("/bin/true", files["elf"])
    with zipfile.ZipFile(files["zip"], "w") as archive:
        archive.writestr("index.html", "<html><body><p>Inside a zip.</p></body></html>")
    files["fake_pdf"].write_text("Just text wearing a .pdf suffix.", encoding="utf-8")
    files["controls"].write_bytes(bytes(range(1, 32)) * 200 + b"some words")
    files["latin1"].write_bytes("Caf\xe9 cr\xe8me, na\xefve.".encode("latin-1"))
    return files


def test_read_document_refuses_what_is_not_a_document(tmp_path: Path) -> None:
    files = not_documents(tmp_path)
    reasons = {
        "fifo": "FIFO",
        "device": "character device",
        "sparse": "too large",
        "random": "binary data",
        "elf": "ELF executable",
        "zip": "ZIP archive",
        "fake_pdf": "does not start with %PDF",
        "controls": "control characters",
        "latin1": "not UTF-8 text",
    }
    for name, reason in reasons.items():
        started = time.monotonic()
        with pytest.raises(NotADocument, match=reason):
            read_document(files[name])
        assert time.monotonic() - started < 2, name
    (tmp_path / "small.txt").write_text("x" * 101)
    assert read_document(tmp_path / "small.txt", max_bytes=101)[1] == "x" * 101
    with pytest.raises(NotADocument, match="over the cap of 100 bytes"):
        read_document(tmp_path / "small.txt", max_bytes=100)
    # HTML may declare a legacy charset: its bytes need not be UTF-8 to be text.
    (tmp_path / "legacy.html").write_bytes(
        b'<html><head><meta charset="latin-1"><title>Caf\xe9</title></head><body><p>Cr\xe8me.</p></body></html>'
    )
    assert read_document(tmp_path / "legacy.html")[0] == "Café"


async def test_cairn_ingest_refuses_each_non_document_and_ingests_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    files = not_documents(folder)
    good = folder / "good.md"
    good.write_text("# Good\n\nA zebrafinchword lives here.", encoding="utf-8")
    env = {k: v for k, v in cli_env(CAIRN_HOME=str(tmp_path / "home")).items() if k != "DATABASE_URL"}
    # Named one by one (the FIFO too, which must never be opened), and the folder as a whole.
    named = [str(p) for p in files.values()]
    code, out, err = await run(CAIRN, "ingest", *named, str(good), env=env, check=False, seconds=60)
    assert code == 1, err
    for path in files.values():
        line = next(line for line in out.splitlines() if str(path) in line)
        assert line.lstrip().startswith("failed") and "NotADocument: " in line, line
    assert f"ingested  {good}" in out and "1 ingested" in out and f"{len(files)} failed" in out

    code, out, err = await run(CAIRN, "ingest", str(folder), "--json", env=env, check=False, seconds=60)
    assert code == 1, err
    reports = {Path(r["path"]).name: r for r in json.loads(out)}
    assert reports["good.md"]["unchanged"] and reports["good.md"]["error"] is None
    assert {name for name, r in reports.items() if r["error"]} == {p.name for p in files.values()}

    with closing(sqlite3.connect(tmp_path / "home" / "corpus.sqlite3")) as conn:
        stored = [row[0] for row in conn.execute("SELECT path FROM documents")]
    assert stored == [str(good)]  # Nothing of any refused file reached the corpus.
    _, out, _ = await run(CAIRN, "ingest", "--search", "zebrafinchword", "--json", env=env)
    assert [p["path"] for p in json.loads(out)["passages"]] == [str(good)]

    small = dict(env, CAIRN_INGEST_MAX_BYTES="10")
    code, out, _ = await run(CAIRN, "ingest", str(good), env=small, check=False)
    assert code == 1 and "over the cap of 10 bytes" in out
    code, _, err = await run(
        CAIRN, "ingest", str(good), env=dict(env, CAIRN_INGEST_MAX_BYTES="lots"), check=False
    )
    assert code == 2 and "CAIRN_INGEST_MAX_BYTES must be a positive number" in err

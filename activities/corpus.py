"""The corpus: the person's own documents (and each run's archive of fetched pages), searchable by BM25.

Why this exists: the researcher's `corpus_search` tool and `cairn ingest` need one store with one
behaviour whichever database holds it: SQLite FTS5 in CAIRN_HOME (the embedded default, nothing to run)
or PostgreSQL full-text search when DATABASE_URL is set (several workers, one corpus). A `scope`
separates collections: "corpus" for ingested documents, "run:<workflow id>" for a run's archive, each
ranked with its own statistics.

Must never: pass a query's text to a query parser (an LLM writes the queries; quotes, operators and
parentheses must mean nothing), leave a document half replaced (replacement is one transaction), turn
a database that cannot be reached into "no results" (that is an `ApplicationError` of type
CorpusUnavailable, which Temporal retries), or show a DSN's password.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from temporalio.exceptions import ApplicationError

from activities.documents import split_passages
from common.config import cairn_home
from common.research_models import IngestReport, Passage

T = TypeVar("T")
UNAVAILABLE = "CorpusUnavailable"
MAX_QUERY_TERMS = 32
MAX_LIMIT = 50
# Letters and digits only: no character that survives can be an operator in FTS5 or tsquery syntax.
_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-case words of `text`: the one tokenization both stores index and query with."""
    return [w.lower() for w in _WORD.findall(text) if len(w) <= 64]


def query_terms(query: str) -> list[str]:
    """Distinct words of a free-text query, in order, at most MAX_QUERY_TERMS."""
    return list(dict.fromkeys(words(query)))[:MAX_QUERY_TERMS]


def _clean(text: str) -> str:
    """NULs (PostgreSQL refuses them) and lone surrogates (no encoder accepts them) become one character
    each, so every char_offset still points into the text the caller holds."""
    return text.replace("\x00", " ").encode("utf-8", "replace").decode("utf-8")


class Corpus(ABC):
    """BM25 passage search over documents, by scope. Safe to share among a worker's activities."""

    async def ingest(self, path: str, title: str, text: str, *, scope: str = "corpus") -> IngestReport:
        """Index `text` as `path`'s passages, replacing any earlier version in one transaction; the same
        title and text as last time writes nothing and says `unchanged`."""
        text = _clean(text)
        digest = hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()
        pieces = await asyncio.to_thread(split_passages, text)
        return await self._store(scope, path, _clean(title), digest, pieces)

    async def search(self, query: str, *, limit: int = 5, scope: str = "corpus") -> list[Passage]:
        """Passages best first (`score` higher is better); [] when the query has no words."""
        terms = query_terms(query)
        if not terms:
            return []
        return await self._search(scope, terms, max(1, min(limit, MAX_LIMIT)))

    @abstractmethod
    async def _store(
        self, scope: str, path: str, title: str, digest: str, pieces: list[tuple[int, str]]
    ) -> IngestReport: ...

    @abstractmethod
    async def _search(self, scope: str, terms: list[str], limit: int) -> list[Passage]: ...

    @abstractmethod
    async def documents(self, scope: str = "corpus") -> int: ...

    @abstractmethod
    async def drop_scope(self, scope: str) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


def open_corpus(env: Mapping[str, str] | None = None) -> Corpus:
    """PostgreSQL when DATABASE_URL is set, else SQLite at $CAIRN_HOME/corpus.sqlite3."""
    env = os.environ if env is None else env
    dsn = env.get("DATABASE_URL")
    if dsn:
        return PostgresCorpus(dsn)
    return SQLiteCorpus(cairn_home(env) / "corpus.sqlite3")


# --- SQLite -----------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    scope TEXT NOT NULL, path TEXT NOT NULL, title TEXT NOT NULL, sha256 TEXT NOT NULL,
    passages INTEGER NOT NULL, ingested_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (scope, path));
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY, scope TEXT NOT NULL, path TEXT NOT NULL, position INTEGER NOT NULL,
    char_offset INTEGER NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS passages_document ON passages (scope, path, position);
CREATE TABLE IF NOT EXISTS scopes (scope TEXT PRIMARY KEY, fts TEXT NOT NULL UNIQUE);
"""
_SQLITE_LOCKED = ("unable to open", "locked", "disk i/o", "readonly", "read-only")


class SQLiteCorpus(Corpus):
    """One FTS5 index per scope (so each scope's BM25 uses its own document counts and lengths) over
    one `passages` table that holds the text (FTS5 "external content"). sqlite3 blocks, so every call
    runs in a thread on a connection of its own; WAL lets readers run while one writer writes."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._with_connection, work)

    def _with_connection(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we say BEGIN ourselves; timeout: wait for another writer, not fail.
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise self._unavailable(err) from None
        try:
            self._ensure_schema(conn)
            return work(conn)
        except sqlite3.OperationalError as err:
            if any(sign in str(err).lower() for sign in _SQLITE_LOCKED):
                raise self._unavailable(err) from None
            raise
        finally:
            conn.close()

    def _unavailable(self, err: BaseException) -> ApplicationError:
        return ApplicationError(
            f"the SQLite corpus at {self.db_path} is unavailable: {err}", type=UNAVAILABLE
        )

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                conn.execute("PRAGMA journal_mode=WAL")  # Persistent: once per database file is enough.
                conn.executescript(_SQLITE_SCHEMA)
                self._schema_ready = True

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: two writers wait in turn instead of one failing to
        # upgrade its read lock half-way through (SQLITE_BUSY that no timeout can cure).
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _fts(conn: sqlite3.Connection, scope: str, create: bool) -> str | None:
        row = conn.execute("SELECT fts FROM scopes WHERE scope = ?", (scope,)).fetchone()
        if row is not None:
            return str(row[0])
        if not create:
            return None
        # A name derived from the scope, never the scope itself: scopes are arbitrary text.
        name = "fts_" + hashlib.sha256(scope.encode()).hexdigest()[:24]
        conn.execute(
            f"CREATE VIRTUAL TABLE {name} USING fts5(text, content='passages', content_rowid='id', "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        conn.execute("INSERT INTO scopes (scope, fts) VALUES (?, ?)", (scope, name))
        return name

    async def _store(
        self, scope: str, path: str, title: str, digest: str, pieces: list[tuple[int, str]]
    ) -> IngestReport:
        def work(conn: sqlite3.Connection) -> IngestReport:
            with self._write(conn):
                old = conn.execute(
                    "SELECT sha256, passages FROM documents WHERE scope = ? AND path = ?", (scope, path)
                ).fetchone()
                if old is not None and old[0] == digest:
                    return IngestReport(path=path, passages=old[1], unchanged=True)
                fts = self._fts(conn, scope, create=True)
                if old is not None:
                    # External content: FTS5 removes a row's terms only when told its old text.
                    conn.execute(
                        f"INSERT INTO {fts} ({fts}, rowid, text) "
                        "SELECT 'delete', id, text FROM passages WHERE scope = ? AND path = ?",
                        (scope, path),
                    )
                    conn.execute("DELETE FROM passages WHERE scope = ? AND path = ?", (scope, path))
                for position, (offset, text) in enumerate(pieces):
                    row = conn.execute(
                        "INSERT INTO passages (scope, path, position, char_offset, text) VALUES (?, ?, ?, ?, ?)",
                        (scope, path, position, offset, text),
                    )
                    conn.execute(f"INSERT INTO {fts} (rowid, text) VALUES (?, ?)", (row.lastrowid, text))
                conn.execute(
                    "INSERT INTO documents (scope, path, title, sha256, passages) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (scope, path) DO UPDATE SET title = excluded.title, sha256 = excluded.sha256, "
                    "passages = excluded.passages, ingested_at = CURRENT_TIMESTAMP",
                    (scope, path, title, digest, len(pieces)),
                )
                return IngestReport(path=path, passages=len(pieces), replaced=old is not None)

        return await self._call(work)

    async def _search(self, scope: str, terms: list[str], limit: int) -> list[Passage]:
        # Each word quoted: FTS5 reads a quoted string as a plain phrase, whatever it contains.
        match = " OR ".join(f'"{term}"' for term in terms)

        def work(conn: sqlite3.Connection) -> list[Passage]:
            # One read transaction: a scope dropped meanwhile by another process is seen whole or not at all.
            conn.execute("BEGIN")
            fts = self._fts(conn, scope, create=False)
            if fts is None:
                conn.execute("COMMIT")
                return []
            rows = conn.execute(
                f"SELECT p.path, d.title, p.position, p.char_offset, p.text, bm25({fts}) AS rank "
                f"FROM {fts} JOIN passages p ON p.id = {fts}.rowid "
                "JOIN documents d ON d.scope = p.scope AND d.path = p.path "
                f"WHERE {fts} MATCH ? ORDER BY rank, p.path, p.position LIMIT ?",
                (match, limit),
            ).fetchall()
            conn.execute("COMMIT")
            # FTS5's bm25() is lower-is-better (negated); Passage.score is higher-is-better.
            return [
                Passage(path=r[0], title=r[1], position=r[2], char_offset=r[3], text=r[4], score=-r[5])
                for r in rows
            ]

        return await self._call(work)

    async def documents(self, scope: str = "corpus") -> int:
        def work(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM documents WHERE scope = ?", (scope,)).fetchone()[0])

        return await self._call(work)

    async def drop_scope(self, scope: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                fts = self._fts(conn, scope, create=False)
                if fts is not None:
                    conn.execute(f"DROP TABLE {fts}")
                for table in ("passages", "documents", "scopes"):
                    conn.execute(f"DELETE FROM {table} WHERE scope = ?", (scope,))

        await self._call(work)

    async def close(self) -> None:
        """Nothing held open: each call had its own connection."""


# --- PostgreSQL -------------------------------------------------------------------------------------

_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cairn_corpus_documents (
        scope text NOT NULL, path text NOT NULL, title text NOT NULL, sha256 text NOT NULL,
        passages integer NOT NULL, ingested_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (scope, path))""",
    """CREATE TABLE IF NOT EXISTS cairn_corpus_passages (
        id bigserial PRIMARY KEY, scope text NOT NULL, path text NOT NULL, position integer NOT NULL,
        char_offset integer NOT NULL, title text NOT NULL, text text NOT NULL,
        length integer NOT NULL, tsv tsvector NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS cairn_corpus_passages_document ON cairn_corpus_passages (scope, path)",
    "CREATE INDEX IF NOT EXISTS cairn_corpus_passages_tsv ON cairn_corpus_passages USING gin (tsv)",
    # BM25's statistics, per scope, kept up to date by every write: document frequency of each term,
    # and the passage count and total length that give the average length.
    """CREATE TABLE IF NOT EXISTS cairn_corpus_terms (
        scope text NOT NULL, term text NOT NULL, df integer NOT NULL, PRIMARY KEY (scope, term))""",
    """CREATE TABLE IF NOT EXISTS cairn_corpus_scopes (
        scope text PRIMARY KEY, passages bigint NOT NULL, total_length bigint NOT NULL)""",
)
_SCHEMA_LOCK = 0x6361_6972_6E00  # "cairn": the advisory lock that serializes schema creation.

# Passages are indexed from their words (`words()`), joined by spaces, so a query word and a document
# word always become the same lexeme ('english': stemmed, stop words dropped). `length` counts them.
_PG_INSERT = """
INSERT INTO cairn_corpus_passages (scope, path, position, char_offset, title, text, length, tsv)
SELECT %(scope)s, %(path)s, n.position, n.char_offset, %(title)s, n.text,
       (SELECT coalesce(sum(cardinality(u.positions)), 0) FROM unnest(v.tsv) AS u), v.tsv
FROM unnest(%(positions)s::int[], %(offsets)s::int[], %(texts)s::text[], %(words)s::text[])
     AS n(position, char_offset, text, words)
CROSS JOIN LATERAL (SELECT to_tsvector('english', n.words) AS tsv) AS v"""

# Scores are rounded to 9 places: float sums in a different row order differ in the last bits, and
# equal scores must fall back to the same tie-break (path, position) every time.
# BM25 with k1 = 1.2, b = 0.75 and Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)), which stays
# positive for terms in more than half the passages. The GIN index finds the passages; tf comes from
# each matching passage's tsvector positions.
_PG_SEARCH = """
WITH s AS (SELECT passages::float8 AS n, total_length::float8 / greatest(passages, 1) AS avgdl
           FROM cairn_corpus_scopes WHERE scope = %(scope)s),
idf AS (SELECT t.term, ln(1 + (s.n - t.df + 0.5) / (t.df + 0.5)) AS idf
        FROM cairn_corpus_terms t CROSS JOIN s
        WHERE t.scope = %(scope)s
          AND t.term = ANY(tsvector_to_array(to_tsvector('english', %(words)s)))),
hits AS (SELECT * FROM cairn_corpus_passages
         WHERE scope = %(scope)s AND tsv @@ to_tsquery('english', %(tsquery)s))
SELECT h.path, h.title, h.position, h.char_offset, h.text,
       round(sum(idf.idf * cardinality(u.positions) * (1.2 + 1)
           / (cardinality(u.positions) + 1.2 * (1 - 0.75 + 0.75 * h.length / greatest(s.avgdl, 1))))::numeric, 9)::float8
         AS score
FROM hits h CROSS JOIN s CROSS JOIN LATERAL unnest(h.tsv) AS u JOIN idf ON idf.term = u.lexeme
GROUP BY h.id, h.path, h.title, h.position, h.char_offset, h.text
ORDER BY score DESC, h.path, h.position
LIMIT %(limit)s"""


def _lock_key(scope: str) -> int:
    """A signed 64-bit advisory lock key per scope: writers of one scope take turns, so the term
    statistics never race and never deadlock; other scopes and all readers go on."""
    return int.from_bytes(hashlib.sha256(f"cairn-corpus:{scope}".encode()).digest()[:8], "big", signed=True)


class PostgresCorpus(Corpus):
    """PostgreSQL full-text search with BM25 computed in SQL; a few connections of its own, reused."""

    def __init__(self, dsn: str, pool_size: int = 4) -> None:
        self._dsn = dsn
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._schema_ready = False
        self._password = ""
        try:
            params = conninfo_to_dict(dsn)
            self._password = str(params.get("password") or "")
            where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
            self.where = f"{params['user']}@{where}" if params.get("user") else where
        except psycopg.Error:
            self.where = "DATABASE_URL (not a valid connection string)"

    def _unavailable(self, err: BaseException, retry: bool = True) -> ApplicationError:
        reason = str(err).strip()
        if self._password:
            reason = reason.replace(self._password, "***")
        return ApplicationError(
            f"the PostgreSQL corpus at {self.where} is unavailable: {reason}",
            type=UNAVAILABLE,
            non_retryable=not retry,
        )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True, connect_timeout=10
                    )
                except psycopg.ProgrammingError:  # A malformed DSN: retrying cannot help; never echo it.
                    raise self._unavailable(ValueError("DATABASE_URL is malformed"), retry=False) from None
            try:
                yield conn
            except BaseException:
                # A failed or cancelled call may leave the session mid-statement: start afresh next time.
                await conn.close()
                raise
            self._idle.append(conn)

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        try:
            async with self._connection() as conn:
                if not self._schema_ready:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                        for statement in _PG_SCHEMA:
                            await conn.execute(statement)
                    self._schema_ready = True
                async with conn.transaction():
                    return await work(conn)
        except psycopg.OperationalError as err:  # Unreachable, restarting, or a deadlock: retry later.
            raise self._unavailable(err) from None

    async def _store(
        self, scope: str, path: str, title: str, digest: str, pieces: list[tuple[int, str]]
    ) -> IngestReport:
        key = {"scope": scope, "path": path}

        async def work(conn: psycopg.AsyncConnection[Any]) -> IngestReport:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(scope),))
            cur = await conn.execute(
                "SELECT sha256, passages FROM cairn_corpus_documents WHERE scope = %(scope)s AND path = %(path)s",
                key,
            )
            old = await cur.fetchone()
            if old is not None and old[0] == digest:
                return IngestReport(path=path, passages=old[1], unchanged=True)
            if old is not None:
                await self._forget(conn, scope, path)
            await conn.execute(
                _PG_INSERT,
                {
                    **key,
                    "title": title,
                    "positions": list(range(len(pieces))),
                    "offsets": [offset for offset, _ in pieces],
                    "texts": [text for _, text in pieces],
                    "words": [" ".join(words(text)) for _, text in pieces],
                },
            )
            await conn.execute(
                "INSERT INTO cairn_corpus_terms (scope, term, df) "
                "SELECT %(scope)s, u.lexeme, count(*) FROM cairn_corpus_passages p, unnest(p.tsv) AS u "
                "WHERE p.scope = %(scope)s AND p.path = %(path)s GROUP BY u.lexeme "
                "ON CONFLICT (scope, term) DO UPDATE SET df = cairn_corpus_terms.df + excluded.df",
                key,
            )
            await conn.execute(
                "INSERT INTO cairn_corpus_scopes (scope, passages, total_length) "
                "SELECT %(scope)s, count(*), coalesce(sum(length), 0) FROM cairn_corpus_passages "
                "WHERE scope = %(scope)s AND path = %(path)s "
                "ON CONFLICT (scope) DO UPDATE SET passages = cairn_corpus_scopes.passages + excluded.passages, "
                "total_length = cairn_corpus_scopes.total_length + excluded.total_length",
                key,
            )
            await conn.execute(
                "INSERT INTO cairn_corpus_documents (scope, path, title, sha256, passages) "
                "VALUES (%(scope)s, %(path)s, %(title)s, %(sha256)s, %(passages)s) "
                "ON CONFLICT (scope, path) DO UPDATE SET title = excluded.title, sha256 = excluded.sha256, "
                "passages = excluded.passages, ingested_at = now()",
                {**key, "title": title, "sha256": digest, "passages": len(pieces)},
            )
            return IngestReport(path=path, passages=len(pieces), replaced=old is not None)

        return await self._run(work)

    @staticmethod
    async def _forget(conn: psycopg.AsyncConnection[Any], scope: str, path: str) -> None:
        """Take a document's passages out of the index and out of the scope's statistics."""
        key = {"scope": scope, "path": path}
        cur = await conn.execute(
            "SELECT u.lexeme, count(*) FROM cairn_corpus_passages p, unnest(p.tsv) AS u "
            "WHERE p.scope = %(scope)s AND p.path = %(path)s GROUP BY u.lexeme",
            key,
        )
        old = await cur.fetchall()
        terms = {**key, "terms": [r[0] for r in old], "counts": [r[1] for r in old]}
        await conn.execute(
            "UPDATE cairn_corpus_terms t SET df = t.df - d.n "
            "FROM unnest(%(terms)s::text[], %(counts)s::int[]) AS d(term, n) "
            "WHERE t.scope = %(scope)s AND t.term = d.term",
            terms,
        )
        await conn.execute(
            "DELETE FROM cairn_corpus_terms WHERE scope = %(scope)s AND term = ANY(%(terms)s) AND df <= 0",
            terms,
        )
        await conn.execute(
            "WITH gone AS (DELETE FROM cairn_corpus_passages WHERE scope = %(scope)s AND path = %(path)s "
            "RETURNING length) "
            "UPDATE cairn_corpus_scopes SET passages = passages - (SELECT count(*) FROM gone), "
            "total_length = total_length - (SELECT coalesce(sum(length), 0) FROM gone) WHERE scope = %(scope)s",
            key,
        )

    async def _search(self, scope: str, terms: list[str], limit: int) -> list[Passage]:
        # Words only, joined by `|`: to_tsquery sees no operator the query's author wrote.
        params = {"scope": scope, "words": " ".join(terms), "tsquery": " | ".join(terms), "limit": limit}

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[Passage]:
            cur = await conn.execute(_PG_SEARCH, params)
            return [
                Passage(path=r[0], title=r[1], position=r[2], char_offset=r[3], text=r[4], score=float(r[5]))
                for r in await cur.fetchall()
            ]

        return await self._run(work)

    async def documents(self, scope: str = "corpus") -> int:
        async def work(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute("SELECT count(*) FROM cairn_corpus_documents WHERE scope = %s", (scope,))
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._run(work)

    async def drop_scope(self, scope: str) -> None:
        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(scope),))
            for table in ("passages", "terms", "scopes", "documents"):
                await conn.execute(f"DELETE FROM cairn_corpus_{table} WHERE scope = %s", (scope,))

        await self._run(work)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

"""The corpus in PostgreSQL: full-text search with BM25 computed in SQL, for when DATABASE_URL is set.

Why this exists: several workers on several machines share one corpus, so it lives in the database they
already share. PostgreSQL's full-text search finds the passages; BM25's statistics (each term's document
frequency, each scope's passage count and length) are kept in tables of their own, updated in the same
transaction as the passages they describe, because ts_rank is not BM25.

Must never: show a DSN's password (not in an error, not for a malformed DSN), let the statistics drift
from the passages (every write updates both, one writer per scope at a time), pass a query's text to
to_tsquery except as words joined by `|`, or keep a connection that a failed or cancelled call may
have left mid-statement.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from temporalio.exceptions import ApplicationError

from activities.corpus.store import Corpus, passage, unavailable, words
from common.tool_models import DocumentEntry, IngestReport, Passage, StoredDocument, StoredPassage

T = TypeVar("T")

_SCHEMA = (
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
_INSERT = """
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
_SEARCH = """
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
        return unavailable(f"PostgreSQL corpus at {self.where}", reason, retry=retry)

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
                        for statement in _SCHEMA:
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
                _INSERT,
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
            cur = await conn.execute(_SEARCH, params)
            return [passage(r, score=float(r[5])) for r in await cur.fetchall()]

        return await self._run(work)

    async def _list(self, scope: str, after: str, limit: int) -> list[DocumentEntry]:
        async def work(conn: psycopg.AsyncConnection[Any]) -> list[DocumentEntry]:
            # COLLATE "C": paths compare byte by byte, whatever the database's locale, as in SQLite.
            cur = await conn.execute(
                "SELECT path, title, passages, sha256, ingested_at FROM cairn_corpus_documents "
                'WHERE scope = %s AND path COLLATE "C" > %s ORDER BY path COLLATE "C" LIMIT %s',
                (scope, after, limit),
            )
            return [
                DocumentEntry(path=r[0], title=r[1], passages=r[2], sha256=r[3], ingested_at=r[4])
                for r in await cur.fetchall()
            ]

        return await self._run(work)

    async def _read(self, scope: str, path: str) -> StoredDocument | None:
        key = {"scope": scope, "path": path}

        # One statement, so one snapshot: under READ COMMITTED two selects could see the entry of one
        # version and the passages of the next, written by an ingest in between.
        async def work(conn: psycopg.AsyncConnection[Any]) -> StoredDocument | None:
            cur = await conn.execute(
                "SELECT d.path, d.title, d.passages, d.sha256, d.ingested_at, "
                "coalesce((SELECT array_agg(ARRAY[p.position::text, p.char_offset::text, p.text] "
                "ORDER BY p.position) FROM cairn_corpus_passages p "
                "WHERE p.scope = d.scope AND p.path = d.path), '{}') "
                "FROM cairn_corpus_documents d WHERE d.scope = %(scope)s AND d.path = %(path)s",
                key,
            )
            row = await cur.fetchone()
            if row is None:
                return None
            entry = DocumentEntry(
                path=row[0], title=row[1], passages=row[2], sha256=row[3], ingested_at=row[4]
            )
            pieces = [StoredPassage(position=int(p[0]), char_offset=int(p[1]), text=p[2]) for p in row[5]]
            return StoredDocument(document=entry, passages=pieces)

        return await self._run(work)

    async def scopes(self, prefix: str) -> list[str]:
        async def work(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            cur = await conn.execute(
                "SELECT scope FROM cairn_corpus_scopes WHERE left(scope, %(n)s) = %(p)s "
                "UNION SELECT scope FROM cairn_corpus_documents WHERE left(scope, %(n)s) = %(p)s ORDER BY 1",
                {"n": len(prefix), "p": prefix},
            )
            return [str(r[0]) for r in await cur.fetchall()]

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

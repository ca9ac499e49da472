"""The corpus in SQLite FTS5: the embedded default, a file in CAIRN_HOME with nothing to run.

Why this exists: one person on one machine needs the corpus without a database server; SQLite's FTS5
ranks by BM25 itself, and one FTS5 index per scope gives each scope its own statistics.

Must never: leave a document half replaced (replacement is one write transaction), use a scope as an
SQL name (scopes are arbitrary text; each index is named from a hash of its scope), hand FTS5 a query
word unquoted, share a connection between threads, or call sqlite3 on the event loop (it blocks).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from temporalio.exceptions import ApplicationError

from activities.corpus.store import Corpus, passage, unavailable
from common.tool_models import DocumentEntry, IngestReport, Passage, StoredDocument, StoredPassage

T = TypeVar("T")

_SCHEMA = """
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
# OperationalError messages that mean the file cannot be used now, not that a statement is wrong.
_UNAVAILABLE_SIGNS = ("unable to open", "locked", "disk i/o", "readonly", "read-only")


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
            if any(sign in str(err).lower() for sign in _UNAVAILABLE_SIGNS):
                raise self._unavailable(err) from None
            raise
        finally:
            conn.close()

    def _unavailable(self, err: BaseException) -> ApplicationError:
        return unavailable(f"SQLite corpus at {self.db_path}", err)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                conn.execute("PRAGMA journal_mode=WAL")  # Persistent: once per database file is enough.
                conn.executescript(_SCHEMA)
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
            return [passage(r, score=-r[5]) for r in rows]

        return await self._call(work)

    async def _list(self, scope: str, after: str, limit: int) -> list[DocumentEntry]:
        def work(conn: sqlite3.Connection) -> list[DocumentEntry]:
            # BINARY collation: paths compare byte by byte, as the PostgreSQL store's COLLATE "C" does.
            rows = conn.execute(
                "SELECT path, title, passages, sha256, ingested_at FROM documents "
                "WHERE scope = ? AND path > ? ORDER BY path LIMIT ?",
                (scope, after, limit),
            ).fetchall()
            return [
                DocumentEntry(path=r[0], title=r[1], passages=r[2], sha256=r[3], ingested_at=_utc(r[4]))
                for r in rows
            ]

        return await self._call(work)

    async def _read(self, scope: str, path: str) -> StoredDocument | None:
        def work(conn: sqlite3.Connection) -> StoredDocument | None:
            conn.execute("BEGIN")  # One read transaction: the entry and its passages of one version.
            try:
                row = conn.execute(
                    "SELECT path, title, passages, sha256, ingested_at FROM documents WHERE scope = ? AND path = ?",
                    (scope, path),
                ).fetchone()
                if row is None:
                    return None
                pieces = conn.execute(
                    "SELECT position, char_offset, text FROM passages WHERE scope = ? AND path = ? ORDER BY position",
                    (scope, path),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            entry = DocumentEntry(
                path=row[0], title=row[1], passages=row[2], sha256=row[3], ingested_at=_utc(row[4])
            )
            return StoredDocument(
                document=entry,
                passages=[StoredPassage(position=p[0], char_offset=p[1], text=p[2]) for p in pieces],
            )

        return await self._call(work)

    async def scopes(self, prefix: str) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT scope FROM scopes WHERE substr(scope, 1, ?) = ? "
                "UNION SELECT scope FROM documents WHERE substr(scope, 1, ?) = ? ORDER BY 1",
                (len(prefix), prefix, len(prefix), prefix),
            ).fetchall()
            return [str(r[0]) for r in rows]

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


def _utc(stamp: str | None) -> datetime | None:
    """SQLite's CURRENT_TIMESTAMP ("YYYY-MM-DD HH:MM:SS", UTC) as an aware datetime."""
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC) if stamp else None

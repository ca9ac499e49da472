"""The API's own database: SQLite in CAIRN_HOME/api.db, or the PostgreSQL of DATABASE_URL.

Why this exists: the API is stateless, so what it must remember between requests and across its
processes (who holds which key, what each tenant spent) lives in a database, and that database is the
one the rest of Cairn already uses. SQL is written once, with `?` placeholders, and runs on both: the
PostgreSQL side rewrites `?` to `%s` (and doubles `%`), skipping quoted literals. Write portable SQL:
text, integers, `CREATE TABLE IF NOT EXISTS`, `INSERT ... ON CONFLICT`.

Must never: call sqlite3 on the event loop (it blocks) or from two threads at once on one connection,
show DATABASE_URL's password (not in an error, not for a malformed DSN), keep a PostgreSQL connection
that a failed or cancelled call may have left mid-statement, or report an unreachable database as
anything but DatabaseUnavailable (the API answers 503 with its message). Nor import psycopg before a
PostgreSQL database is opened: every `cairn` command imports this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from common.config import cairn_home, private_directory

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]

API_DB_FILE = "api.db"
BUSY_SECONDS = 10.0  # How long SQLite waits for another writer (the CLI, another API process).
CONNECT_SECONDS = 5  # A database that does not answer in this time is unavailable, not slow.
POOL_SIZE = 4
# OperationalError messages that mean the SQLite file cannot be used now, not that the SQL is wrong.
_SQLITE_UNAVAILABLE = ("unable to open", "locked", "disk i/o", "readonly", "read-only", "not a database")
# Schemas already ensured by this process, by database and name: each is created once per process.
_ENSURED: set[tuple[str, str]] = set()


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used now; the message names it (never with a password)."""


class Database(ABC):
    """One small async interface over both databases. Safe to share among a process's requests."""

    dialect: ClassVar[Dialect]
    where: str  # Where the database is, for messages: a path, or user@host:port/db without password.
    _memo_key: str  # Which database this is, for the per-process memo of ensured schemas.

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; the number of rows it changed."""

    @abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...

    async def ensure_schema(self, name: str, statements: Sequence[str]) -> None:
        """Run `statements` (idempotent DDL) in one transaction, once per process for this database."""
        if (self._memo_key, name) in _ENSURED:
            return
        await self._create_schema(name, statements)
        _ENSURED.add((self._memo_key, name))

    @abstractmethod
    async def _create_schema(self, name: str, statements: Sequence[str]) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class SQLiteDatabase(Database):
    """One connection, opened on first use, used by one thread at a time under a lock; every call runs
    in a worker thread. WAL lets the CLI read while the API writes."""

    dialect: ClassVar[Dialect] = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._memo_key = f"sqlite:{path.absolute()}"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            private_directory(self.path.parent)
            # Created 0600 before SQLite opens it (its WAL and shared-memory files copy the mode): it
            # holds key hashes and every tenant's spend. One Cairn made looser before is tightened.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            if self.path.stat().st_uid == os.getuid() and self.path.stat().st_mode & 0o077:
                self.path.chmod(0o600)
            # isolation_level=None: each statement commits itself, and BEGIN is said explicitly.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
                conn.execute("PRAGMA journal_mode=WAL")  # Kept by the file: once is enough, again is cheap.
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._connection())
            except OSError as err:
                raise DatabaseUnavailable(f"the API database at {self.where} is unavailable: {err}") from None
            except sqlite3.DatabaseError as err:  # A wrong statement stays what it is: a bug to see.
                if any(sign in str(err).lower() for sign in _SQLITE_UNAVAILABLE):
                    raise DatabaseUnavailable(
                        f"the API database at {self.where} is unavailable: {err}"
                    ) from None
                raise

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._call(lambda conn: conn.execute(sql, tuple(params)).rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._call(lambda conn: [tuple(r) for r in conn.execute(sql, tuple(params))])

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        def work(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row = conn.execute(sql, tuple(params)).fetchone()
            return None if row is None else tuple(row)

        return await self._call(work)

    async def _create_schema(self, name: str, statements: Sequence[str]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            # IMMEDIATE: two processes creating the schema take turns instead of one failing midway.
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    conn.execute(statement)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._call(work)

    async def close(self) -> None:
        def work() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(work)


def to_pyformat(sql: str) -> str:
    """`?` placeholders to psycopg's `%s`, and a literal `%` to `%%`; text in single quotes keeps its
    `?` (a doubled quote inside a literal closes and reopens it, which leaves the result right)."""
    out: list[str] = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted
        if char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


class PostgresDatabase(Database):
    """A few autocommit connections, reused; one that failed is closed, and so are the idle ones, since a
    failure usually means the server restarted and they are all dead."""

    dialect: ClassVar[Dialect] = "postgresql"

    def __init__(self, dsn: str, pool_size: int = POOL_SIZE) -> None:
        # Imported here: every `cairn` command imports this module (through `cairn keys`), and only
        # one that uses PostgreSQL should pay for loading psycopg.
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        self._dsn = dsn
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._password = ""
        try:
            params = conninfo_to_dict(dsn)
            self._password = str(params.get("password") or "")
            where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
            self.where = f"{params['user']}@{where}" if params.get("user") else where
        except psycopg.Error:
            self.where = "DATABASE_URL (not a valid connection string)"
        # The schema memo is keyed by the DSN's digest: two DSNs naming one database differently only
        # cost a second, idempotent, creation.
        self._memo_key = "pg:" + hashlib.sha256(dsn.encode()).hexdigest()[:16]

    def _unavailable(self, err: BaseException) -> DatabaseUnavailable:
        reason = " ".join(str(err).split())
        if self._password:
            reason = reason.replace(self._password, "***")
        return DatabaseUnavailable(f"the API database (PostgreSQL at {self.where}) is unavailable: {reason}")

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        import psycopg

        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                try:
                    conn = await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True, connect_timeout=CONNECT_SECONDS
                    )
                except psycopg.ProgrammingError:  # A malformed DSN: never echo it.
                    raise self._unavailable(ValueError("DATABASE_URL is malformed")) from None
            try:
                yield conn
            except BaseException as err:
                await conn.close()
                if isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
                    await self._drop_idle()
                raise
            self._idle.append(conn)

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        import psycopg

        try:
            async with self._connection() as conn:
                return await work(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            raise self._unavailable(err) from None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async def work(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute(to_pyformat(sql), tuple(params))
            return cur.rowcount

        return await self._run(work)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def work(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(to_pyformat(sql), tuple(params))
            return [tuple(r) for r in await cur.fetchall()]

        return await self._run(work)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(to_pyformat(sql), tuple(params))
            row = await cur.fetchone()
            return None if row is None else tuple(row)

        return await self._run(work)

    async def _create_schema(self, name: str, statements: Sequence[str]) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's catalog: API processes
        # starting together take turns on an advisory lock named after the schema.
        lock = int.from_bytes(
            hashlib.sha256(f"cairn-schema:{name}".encode()).digest()[:8], "big", signed=True
        )

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
                for statement in statements:
                    await conn.execute(to_pyformat(statement), ())

        await self._run(work)

    async def close(self) -> None:
        await self._drop_idle()


async def open_database(env: Mapping[str, str] | None = None) -> Database:
    """PostgreSQL when DATABASE_URL is set, else SQLite at $CAIRN_HOME/api.db. Nothing is opened until
    the first call, so an API whose database is down still starts, and answers 503."""
    return database_of(env)


def database_of(env: Mapping[str, str] | None = None) -> Database:
    """`open_database` for code that is not async (the worker's start-up): it opens nothing either."""
    env = os.environ if env is None else env
    dsn = env.get("DATABASE_URL")
    if dsn:
        return PostgresDatabase(dsn)
    return SQLiteDatabase(cairn_home(env) / API_DB_FILE)

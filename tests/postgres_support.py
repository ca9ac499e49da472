"""Pytest fixture for tests of the corpus's PostgreSQL store: a real PostgreSQL for the session.

Why this exists: BM25 computed in SQL, the schema race between workers and replacement in one
transaction only mean something against the real server, so the session starts a throwaway cluster from
Debian's `postgresql` (or uses CAIRN_TEST_DATABASE_URL) instead of skipping. Registered through
`pytest_plugins`.

Must never: skip when PostgreSQL is missing (the fixture fails with what to install), or leave the
cluster running after the session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    server = PostgresServer().start()
    yield server.dsn
    server.stop()

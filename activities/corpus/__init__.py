"""The corpus: the person's own documents (and each run's archive of fetched pages), searchable by BM25.

Why this exists: the researcher's `corpus_search` tool and `cairn ingest` need one store with one
behaviour whichever database holds it: SQLite FTS5 in CAIRN_HOME (the embedded default, nothing to run)
or PostgreSQL full-text search when DATABASE_URL is set (several workers, one corpus). A `scope`
separates collections, each ranked with its own statistics: a tenant's documents (`corpus_scope` of
common/tenancy.py: "corpus" for the default tenant, "corpus:<tenant>" for another) and a run's archive
("run:<workflow id>"). A search reads one scope only, so one tenant never finds another's documents.
This module chooses the store; `store` holds what both backends share, `sqlite` and `postgres` the
backends, `documents` the reading and splitting of documents, `uploads` the API's ingestion of bytes.

Must never: import a backend before a store is opened or named. Every `cairn` command imports
`documents` through this package, and only an opened corpus needs sqlite3 or psycopg.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from activities.corpus.store import MAX_LIMIT, MAX_QUERY_TERMS, Corpus, query_terms, words
from common.config import cairn_home

if TYPE_CHECKING:
    from activities.corpus.postgres import PostgresCorpus
    from activities.corpus.sqlite import SQLiteCorpus

__all__ = [
    "MAX_LIMIT",
    "MAX_QUERY_TERMS",
    "Corpus",
    "PostgresCorpus",
    "SQLiteCorpus",
    "open_corpus",
    "query_terms",
    "words",
]

_BACKENDS = {"SQLiteCorpus": "activities.corpus.sqlite", "PostgresCorpus": "activities.corpus.postgres"}


def __getattr__(name: str) -> Any:
    """`from activities.corpus import SQLiteCorpus` (or PostgresCorpus) imports that backend then."""
    if name in _BACKENDS:
        return getattr(importlib.import_module(_BACKENDS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_corpus(env: Mapping[str, str] | None = None) -> Corpus:
    """PostgreSQL when DATABASE_URL is set, else SQLite at $CAIRN_HOME/corpus.sqlite3."""
    env = os.environ if env is None else env
    dsn = env.get("DATABASE_URL")
    if dsn:
        from activities.corpus.postgres import PostgresCorpus

        return PostgresCorpus(dsn)
    from activities.corpus.sqlite import SQLiteCorpus

    return SQLiteCorpus(cairn_home(env) / "corpus.sqlite3")

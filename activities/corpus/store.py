"""The corpus store's contract: what every backend does the same way, whichever database holds it.

Why this exists: the researcher's `corpus_search` tool and `cairn ingest` must see one behaviour from
SQLite and from PostgreSQL, so the rules both backends follow live here once: the words a text is
indexed and queried by, the bounds on a query, the cleaning, hashing and splitting of a document before
it is stored, the `Passage` a search row becomes, and the failure a store that cannot be reached raises.
A backend only says how its database stores and ranks.

Must never: touch a database (that is a backend's job), pass a query's text on as anything but its
words (an LLM writes the queries; quotes, operators and parentheses must mean nothing), or turn a store
that cannot be reached into "no results" (that is an `ApplicationError` of type CorpusUnavailable, which
Temporal retries).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from temporalio.exceptions import ApplicationError

from activities.corpus.documents import split_passages
from common import errors
from common.tool_models import DocumentEntry, IngestReport, Passage, StoredDocument

MAX_QUERY_TERMS = 32
MAX_LIMIT = 50
# Documents one listing returns at most; a longer listing is read a page at a time (`after`).
MAX_LISTED = 1000
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


def passage(row: Sequence[Any], score: float) -> Passage:
    """A search row as a `Passage`. Every backend selects path, title, position, char_offset and text,
    in that order, and gives the score higher-is-better."""
    path, title, position, char_offset, text = row[:5]
    return Passage(path=path, title=title, position=position, char_offset=char_offset, text=text, score=score)


def unavailable(store: str, reason: object, *, retry: bool = True) -> ApplicationError:
    """The failure of a store that cannot be reached, named by `store` (never with a password); Temporal
    retries it unless `retry` is False, for a failure retrying cannot cure."""
    return ApplicationError(
        f"the {store} is unavailable: {reason}", type=errors.CORPUS_UNAVAILABLE, non_retryable=not retry
    )


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

    async def list_documents(
        self, scope: str, *, after: str = "", limit: int = MAX_LISTED
    ) -> list[DocumentEntry]:
        """The documents of `scope` in order of their path (compared byte by byte, the same in every
        store), those after the path `after` only, at most `limit` (MAX_LISTED at most): pass the
        last path of a page as `after` to read the next."""
        return await self._list(scope, after, max(1, min(limit, MAX_LISTED)))

    async def read_document(self, scope: str, path: str) -> StoredDocument | None:
        """The document `path` of `scope` with its passages in order, read in one transaction (so never
        half of an old version and half of a new one); None when `scope` has no such document."""
        return await self._read(scope, path)

    async def read_text(self, scope: str, path: str) -> str | None:
        """The full text of document `path` of `scope` as it was indexed (its passages put back at
        their offsets, the whitespace between them a paragraph break), or None when there is none."""
        stored = await self.read_document(scope, path)
        if stored is None or not stored.passages:
            return None
        parts: list[str] = []
        end = 0
        for piece in stored.passages:
            if parts and piece.char_offset > end:
                parts.append("\n\n")
            parts.append(piece.text)
            end = piece.char_offset + len(piece.text)
        return "".join(parts)

    @abstractmethod
    async def scopes(self, prefix: str) -> list[str]:
        """Every scope whose name starts with `prefix` (a tenant's run archives: `run:<tenant>.`)."""

    @abstractmethod
    async def _store(
        self, scope: str, path: str, title: str, digest: str, pieces: list[tuple[int, str]]
    ) -> IngestReport: ...

    @abstractmethod
    async def _search(self, scope: str, terms: list[str], limit: int) -> list[Passage]: ...

    @abstractmethod
    async def _list(self, scope: str, after: str, limit: int) -> list[DocumentEntry]: ...

    @abstractmethod
    async def _read(self, scope: str, path: str) -> StoredDocument | None: ...

    @abstractmethod
    async def documents(self, scope: str = "corpus") -> int: ...

    @abstractmethod
    async def drop_scope(self, scope: str) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

"""What the researcher's tools take and give back: search hits, fetched pages, corpus passages.

These cross Temporal boundaries (tool activities' results land in history, by reference through the
payload store when large), so they follow common/models.py's rule: evolve only by adding fields with
defaults. Nothing here holds a key or a client.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from common.models import Tolerant


class SearchHit(Tolerant):
    title: str = ""
    url: str
    snippet: str = ""


class SearchResults(Tolerant):
    """What `web_search` found. `backend` names the service that answered."""

    query: str
    backend: str
    hits: list[SearchHit] = Field(default_factory=list)
    # Hits the run's domain policy removed (common/domains.py), so the model knows results were held back.
    withheld: int = 0


class FetchedPage(Tolerant):
    """A fetched page's main text, extracted from HTML (or the body of a text/plain answer)."""

    url: str  # as asked
    final_url: str  # after redirects
    title: str = ""
    text: str
    content_type: str = ""
    size_bytes: int = 0  # bytes read from the network, before extraction
    truncated: bool = False  # the body hit the size cap and was cut


class Passage(Tolerant):
    """One passage of a document in the corpus (or of a run's archive), ranked by BM25."""

    path: str  # the document's path as ingested (absolute), or a URL for a run's archive
    title: str = ""
    position: int  # the passage's index within its document, from 0
    char_offset: int = 0  # where the passage starts in the document's extracted text
    text: str
    score: float = 0.0  # higher is better


class CorpusResults(Tolerant):
    query: str
    passages: list[Passage] = Field(default_factory=list)


class IngestReport(Tolerant):
    """What `cairn ingest` did to one document."""

    path: str
    passages: int
    replaced: bool = False  # the document was ingested before and its passages were replaced
    unchanged: bool = False  # same content as before: nothing written
    error: str | None = None


class DocumentEntry(Tolerant):
    """One document of a corpus scope, as `Corpus.list_documents` (and the API's `GET /v1/documents`)
    lists it: what is stored about it, never its text."""

    path: str  # as ingested: an absolute path (`cairn ingest`) or `upload:<name>` (the API)
    title: str = ""
    passages: int = 0
    sha256: str = ""  # of the title and text as stored: an unchanged re-ingest keeps it
    ingested_at: datetime | None = None  # UTC: when this version of the document was stored


class StoredPassage(Tolerant):
    """One passage of a stored document: exactly the document's text at `char_offset` onwards."""

    position: int
    char_offset: int
    text: str


class StoredDocument(Tolerant):
    """A document as the corpus holds it (`Corpus.read_document`, the API's `GET /v1/documents/text`):
    its entry and its passages in order. The passages cover every word of the text; only the whitespace
    between them is not kept, so a reader shows them one after another."""

    document: DocumentEntry
    passages: list[StoredPassage] = Field(default_factory=list)

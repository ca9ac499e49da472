"""Documents uploaded over the HTTP API: bytes in, a tenant's corpus passages out, by `cairn ingest`'s rules.

Why this exists: `POST /v1/documents` receives a file's bytes and a file name rather than a path, and
must refuse and accept exactly what `cairn ingest` does. So the reading is documents.py's
`parse_document`, the one implementation behind `read_document` too: the suffixes read, the size cap
(CAIRN_INGEST_MAX_BYTES, else MAX_BYTES), sniffing that the bytes are the format the suffix names, PDF
and HTML text extraction. Only what an upload has and a file does not is decided here: its name and
whose corpus it goes to.

The stored path is `upload:<name>`, `name` the sanitised last component of the file name the client
sent (a browser may send `C:\\Users\\me\\notes.md`; only `notes.md` is kept). The prefix keeps uploads
apart from documents `cairn ingest` stored under their absolute paths, so an upload never replaces one
of those; uploading the same name again replaces the earlier upload, as ingesting the same path again
does. The document goes to `corpus_scope(tenant)` and nowhere else.

Must never: take the tenant from anything but the caller's argument (the API passes the authenticated
tenant), let a refused upload reach the corpus, keep a client's directory names or control characters
in a stored path, or parse on the event loop (PDF extraction is CPU-bound).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import PurePosixPath
from typing import Literal

from activities.corpus.documents import NotADocument, UnsupportedDocument, max_bytes_from, parse_document
from activities.corpus.store import Corpus
from common.tenancy import corpus_scope
from common.tool_models import IngestReport

UPLOAD_PREFIX = "upload:"
MAX_NAME_CHARS = 200
_SEPARATORS = re.compile(r"[/\\]")

# Why an upload was refused: `no_name` (nothing of a file name left), `unsupported` (a suffix we do not
# read), `too_large` (over the cap), `not_its_format` (binary data, or not the format its suffix names).
UploadRefusal = Literal["no_name", "unsupported", "too_large", "not_its_format"]


class UploadRefused(ValueError):
    """An upload refused before anything of it was stored. The message is for the person who sent it;
    `reason` is for the API to choose its answer by (413 for too_large, say)."""

    def __init__(self, message: str, reason: UploadRefusal) -> None:
        super().__init__(message)
        self.reason: UploadRefusal = reason


def upload_name(filename: str) -> str:
    """The name an upload is stored under: the last component of `filename` (either slash), with
    control characters made `_`, runs of white space made one space, at most MAX_NAME_CHARS (its
    suffix kept); UploadRefused ("no_name") when nothing of a name is left."""
    leaf = _SEPARATORS.split(filename)[-1]
    leaf = " ".join("".join(ch if ch.isprintable() else "_" for ch in leaf).split())
    if leaf in ("", ".", ".."):
        raise UploadRefused(f"the upload has no file name (it was called {filename[:80]!r})", "no_name")
    if len(leaf) > MAX_NAME_CHARS:
        suffix = PurePosixPath(leaf).suffix
        suffix = suffix if len(suffix) <= 12 else ""
        leaf = leaf[: MAX_NAME_CHARS - len(suffix) - 1] + "~" + suffix
    return leaf


async def ingest_upload(
    corpus: Corpus, tenant: str, filename: str, data: bytes, *, max_bytes: int | None = None
) -> IngestReport:
    """Store the uploaded document `data`, called `filename`, in `tenant`'s corpus; its report, whose
    `path` is `upload:<name>`. `max_bytes` defaults to CAIRN_INGEST_MAX_BYTES, else MAX_BYTES; the
    caller should stop reading a body at `max_bytes` + 1 bytes rather than hold more.

    Raises, and stores nothing: UploadRefused, whose `reason` says why, for a name without a suffix we
    read, bytes over the cap, or bytes not of the suffix's format (the message is documents.py's, as
    `cairn ingest` prints it); ValueError for a tenant that is not one (the caller's bug, not the
    upload's). A store that does not answer raises ApplicationError CorpusUnavailable, as every corpus
    call does."""
    scope = corpus_scope(tenant)
    name = upload_name(filename)
    cap = max_bytes_from(os.environ) if max_bytes is None else max_bytes
    try:
        title, text = await asyncio.to_thread(parse_document, name, data, cap)
    except UnsupportedDocument as err:
        raise UploadRefused(str(err), "unsupported") from err
    except NotADocument as err:
        # Bytes in memory are never a FIFO or a device: not_regular cannot happen here.
        reason: UploadRefusal = "too_large" if err.reason == "too_large" else "not_its_format"
        raise UploadRefused(f"{name}: {err}", reason) from err
    return await corpus.ingest(UPLOAD_PREFIX + name, title or PurePosixPath(name).stem, text, scope=scope)

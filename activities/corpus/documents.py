"""Reading a person's documents (text, markdown, HTML, PDF) as plain text, and cutting text into passages.

Why this exists: `cairn ingest`, uploads over the HTTP API (activities/corpus/uploads.py) and the corpus
store need one answer to "what is the text of this document" and "where are its passages", so a
passage's `char_offset` always points into the same text that `read_document` returned. A file on disk
(`read_document`) and bytes received over HTTP (`parse_document`) go through the same checks: the
suffixes read, the size cap, sniffing that the bytes are what the suffix names, and the parsers. The
researcher sees passages, never whole files.

Must never: guess at a format it does not support (an unsupported file is a clear error, not an empty
document), execute or fetch anything a document refers to (no scripts, no external entities, no URLs),
or return a passage that is not an exact slice of the text it was cut from. Must never open anything
but a regular file (opening a FIFO blocks, a device never ends), read more than `max_bytes` + 1 bytes
of one (MAX_BYTES unless the caller says otherwise), or pass bytes to a parser before they look like
the format the suffix names: binary data renamed `.md` would otherwise become passages a model cites.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Literal

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
_HTML = (".html", ".htm")

# Passages of roughly this many characters: long enough to carry a thought, short enough that five of
# them fit in a model's context next to everything else.
MIN_CHARS = 800
MAX_CHARS = 1500

# Room for a book-length PDF and more: a larger "document" is a data dump or a mistake, and parsing it
# holds several times its size in memory.
MAX_BYTES = 50 * 1024 * 1024
_CHUNK = 1024 * 1024

# Text holds few control characters (tabs, line breaks, the odd escape sequence of a coloured log) and
# binary data many, even with its NUL bytes removed: a share above this one is binary data.
MAX_CONTROL_SHARE = 0.05
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")

# Formats no suffix turns into a document, known by their first bytes.
_BINARY_MAGIC = (
    (b"\x7fELF", "an ELF executable"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "a Mach-O or Java class file"),
    (b"\x00asm", "a WebAssembly module"),
    (b"PK\x03\x04", "a ZIP archive (or a format built on one: docx, xlsx, jar, epub)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"(\xb5/\xfd", "zstd data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


# Why a document was refused: `not_regular` (a directory, FIFO, device or socket), `too_large` (over the
# cap), `not_its_format` (binary data, or not the format its suffix names). The HTTP API answers each
# with its own status (413 for too_large); the CLI prints the message.
Refusal = Literal["not_regular", "too_large", "not_its_format"]


class UnsupportedDocument(ValueError):
    """A name whose suffix is not one we read (or no name at all): refused before a byte is looked at."""


class NotADocument(ValueError):
    """A file refused before any parser sees it: not a regular file, too large, or not the format its
    suffix names. The message says which, for the person who named the file; `reason` says it for
    a program."""

    def __init__(self, message: str, reason: Refusal = "not_its_format") -> None:
        super().__init__(message)
        self.reason: Refusal = reason


def max_bytes_from(environ: Mapping[str, str]) -> int:
    """The per-document cap: CAIRN_INGEST_MAX_BYTES, or MAX_BYTES when it is unset or empty; ValueError
    for a value that is not a positive number of bytes."""
    raw = environ.get("CAIRN_INGEST_MAX_BYTES", "").strip()
    if not raw:
        return MAX_BYTES
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(f"CAIRN_INGEST_MAX_BYTES must be a positive number of bytes, not {raw[:40]!r}")
    return int(raw)


def check_suffix(name: str) -> str:
    """The lower-case suffix of the document name `name`, or UnsupportedDocument for one we do not read."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in SUPPORTED:
        raise UnsupportedDocument(
            f"cannot read {name}: unsupported suffix {suffix or '(none)'!r}; {supported_text()}"
        )
    return suffix


def read_document(path: Path, max_bytes: int = MAX_BYTES) -> tuple[str, str]:
    """(title, text) of a document file; UnsupportedDocument (a ValueError) for a suffix we do not read,
    NotADocument for a file that is not a document of its suffix's kind."""
    check_suffix(path.name)  # Before the file is opened: an unsupported one is never read.
    return parse_document(path.name, _read_regular(path, max_bytes), max_bytes)


def parse_document(name: str, raw: bytes, max_bytes: int = MAX_BYTES) -> tuple[str, str]:
    """(title, text) of `raw`, the bytes of a document called `name` (its suffix names the format, its
    stem is a PDF's title when the PDF has none); the same errors as `read_document`. CPU-bound (PDF
    and HTML parsing): call it off the event loop."""
    suffix = check_suffix(name)
    if len(raw) > max_bytes:
        raise NotADocument(_too_large(max_bytes, len(raw)), "too_large")
    for magic, kind in _BINARY_MAGIC:
        if raw.startswith(magic):
            raise NotADocument(f"{kind}, not a document, whatever its suffix says")
    if suffix == ".pdf":
        if not raw.startswith(b"%PDF"):
            raise NotADocument("not a PDF: it does not start with %PDF")
        return _read_pdf(raw, PurePosixPath(name).stem)
    if suffix in _HTML:
        _as_text(raw, legacy_encoding_ok=True)  # Refuses what is not text before the parser sees it.
        return _read_html(raw)
    text = _as_text(raw, legacy_encoding_ok=False)
    return _markdown_title(text) if suffix != ".txt" else "", text


def _read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file `path` names (through any symlinks), at most `max_bytes`. Anything
    else is refused from its stat, before it is opened; the open checks again what it got."""
    target = os.path.realpath(path)
    _require_regular(os.stat(target), max_bytes)
    # O_NONBLOCK: should a FIFO be swapped in after the check, opening it must not wait for a writer.
    # O_NOFOLLOW: nor may a symlink swapped in lead elsewhere.
    fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _require_regular(os.fstat(fd), max_bytes)
        data = bytearray()
        while len(data) <= max_bytes:  # A file that grows while read still stops one byte past the cap.
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise NotADocument(_too_large(max_bytes), "too_large")
    return bytes(data)


def _require_regular(info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kinds = (
            (stat.S_ISDIR, "a directory"),
            (stat.S_ISFIFO, "a FIFO (named pipe)"),
            (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"),
        )
        kind = next((name for test, name in kinds if test(info.st_mode)), "a special file")
        raise NotADocument(f"{kind}, not a regular file", "not_regular")
    if info.st_size > max_bytes:  # Its apparent size: a sparse file is refused without a byte read.
        raise NotADocument(_too_large(max_bytes, info.st_size), "too_large")


def _too_large(max_bytes: int, size: int | None = None) -> str:
    what = f"{size:,} bytes, over" if size is not None else "over"
    return f"too large: {what} the cap of {max_bytes:,} bytes (CAIRN_INGEST_MAX_BYTES)"


def _as_text(raw: bytes, *, legacy_encoding_ok: bool) -> str:
    """`raw` as text, or NotADocument when it is not: NUL bytes, bytes that are not UTF-8 (HTML may
    declare a legacy charset, which its parser reads), or a high share of control characters."""
    if b"\x00" in raw:
        raise NotADocument("binary data, not text: it holds NUL bytes (UTF-16 text must be saved as UTF-8)")
    try:
        text = raw.decode("utf-8-sig")  # -sig: drop a BOM
    except UnicodeDecodeError as err:
        if not legacy_encoding_ok:
            raise NotADocument(f"not UTF-8 text: {err.reason} at byte {err.start}") from None
        text = raw.decode("latin-1")  # Only to count control characters below.
    controls = len(_CONTROL.findall(text))
    if controls > MAX_CONTROL_SHARE * len(text):
        raise NotADocument(
            f"binary data, not text: {controls:,} of its {len(text):,} characters are control characters"
        )
    return text


def supported_text() -> str:
    return "supported: " + ", ".join(SUPPORTED)


def iter_documents(paths: list[Path]) -> Iterator[Path]:
    """Every document under `paths`: directories recursively (sorted, skipping hidden names and suffixes
    we do not read), files as named. A missing path or an explicitly named unsupported file is an error:
    the person asked for it by name, so silently skipping it would hide a mistake. A FIFO, device or
    socket with a document's suffix is yielded too, for `read_document` to refuse by name."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).parts
                if any(part.startswith(".") for part in relative):
                    continue
                if child.suffix.lower() in SUPPORTED and child.exists() and not child.is_dir():
                    yield child
        elif path.exists():
            if path.suffix.lower() not in SUPPORTED:
                raise UnsupportedDocument(
                    f"{path}: unsupported suffix {path.suffix or '(none)'!r}; {supported_text()}"
                )
            yield path
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")


def _markdown_title(text: str) -> str:
    match = re.search(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _read_html(raw: bytes) -> tuple[str, str]:
    import lxml.html
    import trafilatura

    # lxml without network access or entity expansion: the HTML parser never fetches anything.
    tree = lxml.html.fromstring(raw) if raw.strip() else None
    title = ""
    if tree is not None:
        for xpath in ("//title", "//h1", "//h2", "//h3"):
            found = tree.xpath(xpath)
            if found and found[0].text_content().strip():
                title = " ".join(found[0].text_content().split())
                break
    text = trafilatura.extract(raw, include_comments=False, include_tables=True) or ""
    if not text.strip() and tree is not None:
        # trafilatura declines pages it judges to have no main content (a short note, a bare list):
        # the person asked for this file, so keep its visible text rather than nothing.
        for bad in tree.xpath("//script|//style|//noscript|//template"):
            bad.drop_tree()
        text = "\n".join(line.strip() for line in tree.text_content().splitlines() if line.strip())
    return title, text


def _read_pdf(raw: bytes, stem: str) -> tuple[str, str]:
    from pypdf import PdfReader

    reader = PdfReader(BytesIO(raw))
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title).strip()
    return title or stem, "\n\n".join(page for page in pages if page)


# Boundaries from strongest to weakest: a blank line, a line break, the end of a sentence, any space.
_SEPARATORS = (
    re.compile(r"\n[ \t\r\f\v]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"\s+"),
)
_STRONG = 2  # a line break or a blank line: where a long-enough passage prefers to end


def _units(text: str, start: int, end: int, level: int, strength: int) -> Iterator[tuple[int, int, int]]:
    """Pieces of text[start:end] (trimmed, at most MAX_CHARS long), each with the strength of the
    boundary before it (3 blank line, 2 line break, 1 sentence, 0 space or a hard cut)."""
    if end - start <= MAX_CHARS:
        yield start, end, strength
        return
    if level == len(_SEPARATORS):  # One "word" longer than a passage (a data blob): cut it.
        for cut in range(start, end, MAX_CHARS):
            yield cut, min(cut + MAX_CHARS, end), strength if cut == start else 0
        return
    piece_start = start
    for match in _SEPARATORS[level].finditer(text, start, end):
        if match.start() > piece_start:
            yield from _units(text, piece_start, match.start(), level + 1, strength)
            strength = len(_SEPARATORS) - 1 - level
        piece_start = match.end()
    if piece_start < end:
        yield from _units(text, piece_start, end, level + 1, strength)


def split_passages(text: str) -> list[tuple[int, str]]:
    """(char_offset, passage) pairs covering `text`'s words in order; each passage is exactly
    text[offset:offset + len(passage)], MAX_CHARS at most, and ends at a paragraph or line once it has
    MIN_CHARS, else at the last sentence (or space) that keeps it within MAX_CHARS."""
    stripped = text.strip()
    if not stripped:
        return []
    start = len(text) - len(text.lstrip())
    spans: list[tuple[int, int]] = []
    current: list[int] = []  # [start, end] of the passage being built
    for unit_start, unit_end, strength in _units(text, start, start + len(stripped), 0, 3):
        if current and (
            unit_end - current[0] > MAX_CHARS
            or (current[1] - current[0] >= MIN_CHARS and strength >= _STRONG)
        ):
            spans.append((current[0], current[1]))
            current = []
        if not current:
            current = [unit_start, unit_end]
        current[1] = unit_end
    if current:
        spans.append((current[0], current[1]))
    return [(s, text[s:e]) for s, e in spans]

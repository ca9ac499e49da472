"""Reading a person's documents (text, markdown, HTML, PDF) as plain text, and cutting text into passages.

Why this exists: `cairn ingest` and the corpus store need one answer to "what is the text of this file"
and "where are its passages", so a passage's `char_offset` always points into the same text that
`read_document` returned. The researcher sees passages, never whole files.

Must never: guess at a format it does not support (an unsupported file is a clear error, not an empty
document), execute or fetch anything a document refers to (no scripts, no external entities, no URLs),
or return a passage that is not an exact slice of the text it was cut from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

SUPPORTED = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")

# Passages of roughly this many characters: long enough to carry a thought, short enough that five of
# them fit in a model's context next to everything else.
MIN_CHARS = 800
MAX_CHARS = 1500


def read_document(path: Path) -> tuple[str, str]:
    """(title, text) of a document; ValueError for a suffix we do not read."""
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md", ".markdown"):
        text = path.read_bytes().decode("utf-8-sig", errors="replace")  # -sig: drop a BOM
        return _markdown_title(text) if suffix != ".txt" else "", text
    if suffix in (".html", ".htm"):
        return _read_html(path.read_bytes())
    if suffix == ".pdf":
        return _read_pdf(path)
    raise ValueError(
        f"cannot read {path.name}: unsupported suffix {suffix or '(none)'!r}; {supported_text()}"
    )


def supported_text() -> str:
    return "supported: " + ", ".join(SUPPORTED)


def iter_documents(paths: list[Path]) -> Iterator[Path]:
    """Every document under `paths`: directories recursively (sorted, skipping hidden names and files we
    cannot read), files as named. A missing path or an explicitly named unsupported file is an error:
    the person asked for it by name, so silently skipping it would hide a mistake."""
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).parts
                if any(part.startswith(".") for part in relative):
                    continue
                if child.is_file() and child.suffix.lower() in SUPPORTED:
                    yield child
        elif path.exists():
            if path.suffix.lower() not in SUPPORTED:
                raise ValueError(
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


def _read_pdf(path: Path) -> tuple[str, str]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title).strip()
    return title or path.stem, "\n\n".join(page for page in pages if page)


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

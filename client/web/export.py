"""A run's report as a file to keep or send: markdown, a standalone HTML page, PDF or DOCX.

Why this exists: `cairn report --format`, the API's report route (by `Accept`) and the web app's download
buttons all hand out the same four files, so they are made here, once. Every format but markdown starts
from one HTML document built from the web app's own renderer (client/web/render.py: markdown rendered
with raw HTML off, then sanitised by nh3, citations linked to the numbered sources), with the run's
structured sources listed and its image artifacts embedded as `data:` URIs, so the file needs nothing
from anywhere to open:
- PDF by WeasyPrint (HTML and CSS to PDF on Pango; it embeds the subset of each font it used);
- DOCX by pandoc (the binary the PyPI package pypandoc-binary ships, pandoc 3, run as a subprocess with
  `--sandbox`), which embeds the images. Debian 12's pandoc 2.17 cannot write DOCX in its sandbox.
Neither format is written by hand.

Must never: let either renderer reach the network or the file system (WeasyPrint's fetcher allows only
`data:` URLs; pandoc runs with `--sandbox`), embed an artifact of another tenant or run (the caller's
reader resolves names for one run of one tenant), or put unsanitised report text into the HTML.
"""

from __future__ import annotations

import asyncio
import base64
import html
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import jinja2

from client.web.render import render_report, safe_url
from common.models import ResearchResult

ExportFormat = Literal["md", "html", "pdf", "docx"]
FORMATS: Final[tuple[str, ...]] = get_args(ExportFormat)
MEDIA_TYPES: Final[dict[str, str]] = {
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
# An image artifact larger than this is listed, not embedded: a report file stays a size one can mail.
MAX_EMBEDDED_IMAGE_BYTES: Final = 10 * 1024 * 1024
# Pandoc on a long report takes a second or two; one that runs for minutes is stuck.
PANDOC_TIMEOUT_SECONDS: Final = 120.0
_IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")

# An artifact's bytes by its name as the report lists it, or None when it is not there.
ArtifactReader = Callable[[str], Awaitable[bytes | None]]

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_HEADING: Final = re.compile(r"<h1>(.*?)</h1>", re.DOTALL)
_TAG: Final = re.compile(r"<[^>]+>")


class ExportUnavailable(RuntimeError):
    """A format's renderer is not installed here (the message names the package that provides it)."""


@dataclass(frozen=True)
class EmbeddedArtifact:
    name: str
    size: int
    media_type: str
    found: bool
    data_uri: str | None


def format_of_accept(accept: str) -> ExportFormat | None:
    """The export format an `Accept` header asks for (the first of its types that is one), or None."""
    by_type = {media.split(";")[0]: fmt for fmt, media in MEDIA_TYPES.items()}
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in by_type:
            return by_type[media]  # type: ignore[return-value]
    return None


def file_name(run_id: str, fmt: str) -> str:
    """A download's file name: the run id made safe for any file system and a Content-Disposition."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", run_id).strip("-")[:100] + f".{fmt}"


async def report_html(result: ResearchResult, read_artifact: ArtifactReader) -> str:
    """The report as one standalone, sanitised HTML document with its sources and artifacts."""
    rendered = render_report(result.report, result.sources)
    artifacts = []
    for artifact in rendered.artifacts:
        data = await read_artifact(artifact.name)
        uri = None
        if data is not None and artifact.media_type in _IMAGE_TYPES and len(data) <= MAX_EMBEDDED_IMAGE_BYTES:
            uri = f"data:{artifact.media_type};base64,{base64.b64encode(data).decode()}"
        artifacts.append(
            EmbeddedArtifact(artifact.name, artifact.size, artifact.media_type, data is not None, uri)
        )
    heading = _HEADING.search(rendered.html)
    title = _TAG.sub("", heading.group(1)).strip() if heading else ""
    sources = [s.model_copy(update={"url": safe_url(s.url)}) for s in rendered.sources]
    return _TEMPLATES.get_template("export.html").render(
        # The heading's text as text (the template escapes it again).
        title=html.unescape(title) or f"Report: {result.question[:200]}",
        body=rendered.html,
        artifacts=artifacts,
        sources=sources,
    )


def html_to_pdf(document: str) -> bytes:
    """PDF from the export's HTML by WeasyPrint; only `data:` URLs are fetched (the embedded images)."""
    try:
        from weasyprint import HTML
        from weasyprint.urls import URLFetcher
    except OSError as err:  # WeasyPrint loads Pango when imported; missing, it is an OSError.
        raise ExportUnavailable(f"PDF export needs Pango (Debian's libpango-1.0-0): {err}") from None
    fetcher = URLFetcher(allowed_protocols={"data"}, allow_redirects=False)
    pdf: bytes = HTML(string=document, url_fetcher=fetcher).write_pdf()
    return pdf


async def html_to_docx(document: str) -> bytes:
    """DOCX from the export's HTML by pandoc, sandboxed: it reads only its input (the images are in it)."""
    try:
        import pypandoc

        pandoc = pypandoc.get_pandoc_path()
    except (ImportError, OSError) as missing:
        raise ExportUnavailable(
            f"DOCX export needs pandoc (the pypandoc-binary package): {missing}"
        ) from None
    process = await asyncio.create_subprocess_exec(
        pandoc,
        "--sandbox",
        "--from=html",
        "--to=docx",
        "--output=-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, errors = await asyncio.wait_for(process.communicate(document.encode()), PANDOC_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"pandoc did not finish within {PANDOC_TIMEOUT_SECONDS:.0f} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"pandoc failed ({process.returncode}): {errors.decode(errors='replace')[:500]}")
    return out


async def export_report(result: ResearchResult, fmt: ExportFormat, read_artifact: ArtifactReader) -> bytes:
    """The report of `result` in `fmt`; ExportUnavailable when this machine lacks the renderer."""
    if fmt == "md":
        return result.report.encode()
    document = await report_html(result, read_artifact)
    if fmt == "html":
        return document.encode()
    if fmt == "pdf":
        return await asyncio.to_thread(html_to_pdf, document)
    return await html_to_docx(document)


def artifact_reader(root: Path, tenant: str, run_id: str) -> ArtifactReader:
    """Reads run `run_id`'s artifacts of `tenant` under `root`, by the names its report lists; a name
    that is not one of that run's files reads as None (activities/sandbox/artifacts.py artifact_path)."""
    from activities.sandbox.artifacts import artifact_path

    def read(name: str) -> bytes | None:
        path = artifact_path(root, tenant, run_id, name)
        return path.read_bytes() if path is not None else None

    async def reader(name: str) -> bytes | None:
        return await asyncio.to_thread(read, name)

    return reader

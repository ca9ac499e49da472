"""A finished run's report as markdown, HTML, PDF and DOCX: through the API's `Accept`, the CLI (through the
API and against Temporal directly) and the web app's download button, against the real stack (Temporal
dev server, worker, scripted LLM, a loopback web, the real sandbox for the chart, `cairn serve`).

Each file is opened by a reader independent of the one that wrote it: pdftotext, pdfimages and pdffonts
(poppler) for the PDF, python-docx for the DOCX, lxml for the HTML; each must carry the report's
citations, its numbered sources and the chart a code step drew. The web app's download buttons are
clicked in Chromium by tests/test_web_app.py.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docx
import lxml.html
import pytest
from temporalio.client import Client

from client.web.export import MEDIA_TYPES, export_report, html_to_docx, html_to_pdf
from common.models import ResearchResult, Source
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite
from tests.api_support import ApiStack, sandbox_stack
from tests.conftest import CAIRN
from tests.helpers import run

QUESTION = "Chart the squares of glacier speeds [code] [steps=1]"


@pytest.fixture(scope="module")
def site() -> Iterator[ResearchSite]:
    server = ResearchSite().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def stack(
    dev_server: DevServer,
    temporal_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    payload_dir: Path,
    site: ResearchSite,
    sandbox_image: str,
) -> AsyncIterator[ApiStack]:
    # The chart is drawn in the real sandbox and kept where the API (same CAIRN_HOME) reads it.
    tmp = tmp_path_factory.mktemp("export")
    async for built in sandbox_stack(dev_server, temporal_client, tmp, payload_dir, site):
        yield built


@pytest.fixture(scope="module")
async def finished(stack: ApiStack) -> ResearchResult:
    """One run of the tenant `atlas` with a research step (cited web sources) and a code step (a chart)."""
    async with await stack.client("atlas") as http:
        started = await http.post("/v1/runs", json={"question": QUESTION, "auto_approve": True})
        run_id = started.json()["id"]
        await stack.temporal.get_workflow_handle(run_id).result()
        whole = await http.get(f"/v1/runs/{run_id}/report", headers={"Accept": "application/json"})
    result = ResearchResult.model_validate(whole.json())
    assert result.sources and "[1]" in result.report and "squares.png" in result.report
    return result


async def pdf_text(data: bytes, tmp: Path) -> str:
    path = tmp / "report.pdf"
    path.write_bytes(data)
    return (await run("pdftotext", "-layout", str(path), "-"))[1]


async def pdf_tool(tool: str, data: bytes, tmp: Path) -> list[str]:
    """The table rows `pdfimages -list` or `pdffonts` prints for the PDF (its two header lines left out)."""
    path = tmp / "report.pdf"
    path.write_bytes(data)
    _, out, _ = await run(tool, *(["-list"] if tool == "pdfimages" else []), str(path))
    return out.splitlines()[2:]


async def pdf_images(data: bytes, tmp: Path) -> list[str]:
    """The PDF's images (an image's alpha channel, its `smask`, is a row of its own: left out)."""
    return [row for row in await pdf_tool("pdfimages", data, tmp) if row.split()[2] == "image"]


def docx_text(data: bytes) -> str:
    document = docx.Document(io.BytesIO(data))
    return "\n".join(p.text for p in document.paragraphs)


def assert_cites_its_sources(text: str, result: ResearchResult) -> None:
    flat = " ".join(text.split())
    assert "[1]" in flat or "[1," in flat, "no citation survived"
    assert "Sources" in flat
    for source in result.sources:
        assert source.title in flat, source.title
        assert source.url is not None and source.url in flat.replace(" ", "")


async def test_the_api_gives_each_format_by_accept_with_citations_sources_and_the_chart(
    stack: ApiStack, finished: ResearchResult, tmp_path: Path
) -> None:
    run_id = finished.workflow_id
    async with await stack.client("atlas", "viewer") as http:
        files = {}
        for fmt in ("md", "html", "pdf", "docx"):
            answer = await http.get(f"/v1/runs/{run_id}/report", headers={"Accept": MEDIA_TYPES[fmt]})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"] == MEDIA_TYPES[fmt]
            if fmt != "md":
                name = run_id.replace(".", "-")
                assert answer.headers["content-disposition"] == f'attachment; filename="{name}.{fmt}"'
            files[fmt] = answer.content
    assert files["md"].decode() == finished.report

    page = lxml.html.fromstring(files["html"])
    assert not page.xpath("//script | //@*[starts-with(name(), 'on')] | //iframe")
    cited = {a.get("href") for a in page.xpath("//a[@class='cite']")}
    assert cited and cited <= {f"#source-{s.id}" for s in finished.sources}
    for source in finished.sources:
        (item,) = page.xpath(f"//li[@id='source-{source.id}']")
        assert item.xpath("a/@href") == [source.url] and source.title in item.text_content()
    (chart,) = page.xpath("//img[@alt='squares.png']")
    assert chart.get("src").startswith("data:image/png;base64,iVBOR")  # A PNG, in the file itself.

    assert files["pdf"].startswith(b"%PDF-")
    assert_cites_its_sources(await pdf_text(files["pdf"], tmp_path), finished)
    images = await pdf_images(files["pdf"], tmp_path)
    assert len(images) == 1 and int(images[0].split()[3]) == 640  # The chart, at its own width.
    fonts = await pdf_tool("pdffonts", files["pdf"], tmp_path)
    assert fonts and all(row.split()[-5] == "yes" for row in fonts), fonts  # Every font embedded.

    assert_cites_its_sources(docx_text(files["docx"]), finished)
    document = docx.Document(io.BytesIO(files["docx"]))
    assert len(document.inline_shapes) == 1
    media = [n for n in zipfile.ZipFile(io.BytesIO(files["docx"])).namelist() if n.startswith("word/media/")]
    assert len(media) == 1 and zipfile.ZipFile(io.BytesIO(files["docx"])).read(media[0]).startswith(
        b"\x89PNG"
    )


async def test_another_tenant_gets_404_and_json_and_markdown_are_unchanged(
    stack: ApiStack, finished: ResearchResult
) -> None:
    run_id = finished.workflow_id
    async with await stack.client("globex") as other:
        for media in MEDIA_TYPES.values():
            answer = await other.get(f"/v1/runs/{run_id}/report", headers={"Accept": media})
            assert answer.status_code == 404 and "glacier" not in answer.text
    async with await stack.client("atlas") as http:
        plain = await http.get(f"/v1/runs/{run_id}/report")
        assert plain.headers["content-type"].startswith("text/markdown") and plain.text == finished.report
        whole = await http.get(f"/v1/runs/{run_id}/report", headers={"Accept": "application/json"})
        assert whole.json()["report"] == finished.report


async def test_the_cli_writes_each_file_through_the_api_and_against_temporal(
    stack: ApiStack, finished: ResearchResult, tmp_path: Path
) -> None:
    run_id = finished.workflow_id
    through_api = {
        **{k: v for k, v in stack.env.items() if not k.startswith(("TEMPORAL_", "CAIRN_"))},
        "CAIRN_API_URL": stack.api.url,
        "CAIRN_API_KEY": await stack.key("atlas", "viewer"),
        "CAIRN_HOME": str(tmp_path / "elsewhere"),  # Nothing of the run is on this side.
    }
    target = tmp_path / "via-api.docx"
    await run(CAIRN, "report", run_id, "--format", "docx", "-o", str(target), env=through_api)
    assert_cites_its_sources(docx_text(target.read_bytes()), finished)
    assert len(docx.Document(str(target)).inline_shapes) == 1

    # Against Temporal directly, the CLI makes the file itself, from the worker's artifacts directory;
    # without --output it is named after the run, in the current directory.
    _, out, _ = await run(CAIRN, "report", run_id, "--format", "pdf", env=stack.env, cwd=tmp_path)
    written = tmp_path / (run_id.replace(".", "-") + ".pdf")
    assert out.strip().startswith(f"Wrote {written.name}")
    assert_cites_its_sources(await pdf_text(written.read_bytes(), tmp_path), finished)
    assert len(await pdf_images(written.read_bytes(), tmp_path)) == 1

    _, out, _ = await run(CAIRN, "report", run_id, "--format", "html", "-o", "-", env=stack.env)
    assert out.startswith("<!doctype html>") and 'id="source-1"' in out

    code, _, err = await run(CAIRN, "report", run_id, "--format", "odt", env=stack.env, check=False)
    assert code == 2 and "invalid choice: 'odt'" in err


async def test_neither_renderer_fetches_anything_the_report_names(site: ResearchSite, tmp_path: Path) -> None:
    """Hostile report text (markup, images on the network and on disk) comes out as text, and neither
    WeasyPrint nor pandoc reaches the network or a file, even handed such HTML directly."""
    leak = f"{site.url}/leak"
    report = (
        f"# Report <script>alert(1)</script>\n\nSee ![x]({leak}-md.png) and <img src='{leak}-html.png'> "
        f"and <img src='file:///etc/hostname'> [1].\n"
    )
    result = ResearchResult(
        workflow_id="atlas.hostile",
        question="q",
        report=report,
        sources=[Source(id="1", title="A page", url="https://example.org/a")],
    )

    async def no_artifacts(name: str) -> bytes | None:
        return None

    exported = {fmt: await export_report(result, fmt, no_artifacts) for fmt in ("html", "pdf", "docx")}
    page = lxml.html.fromstring(exported["html"])
    assert not page.xpath("//script | //img")
    assert "<script>alert(1)</script>" in page.xpath("string(//h1)")
    hostname = Path("/etc/hostname").read_text().strip()
    raw = (
        f"<p>x</p><img src='{leak}-raw.png'><img src='file:///etc/hostname'>"
        f"<link rel='stylesheet' href='{leak}-raw.css'>"
    )
    pdf = await asyncio.to_thread(html_to_pdf, raw)
    document = await html_to_docx(raw)
    assert not [r for r in site.requests if "leak" in r], site.requests
    assert hostname not in await pdf_text(pdf, tmp_path) and not await pdf_images(pdf, tmp_path)
    assert not [n for n in zipfile.ZipFile(io.BytesIO(document)).namelist() if n.startswith("word/media/")]
    assert hostname not in docx_text(exported["docx"]) + docx_text(document)

"""The web app as a person uses it, in Debian's Chromium driven by Playwright, against the real
`cairn serve`, Temporal dev server, worker, scripted LLM and a loopback web (tests/web_support.py):
sign in, start, edit and approve the plan, watch the run live, read the report and follow a citation;
survive the server's restart; show hostile text as text; keep tenants apart and viewers hands-off;
work by keyboard alone; sign in with the OIDC provider.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from temporalio.client import Client

from client.api import CairnClient
from client.server.app import ServerConfig
from common.env import ConfigError
from testkit.dev_server import DevServer
from testkit.oidc_issuer import AUDIENCE, KEYS, Issuer
from testkit.research_site import ResearchSite
from tests.api_support import ApiStack, sandbox_stack
from tests.helpers import run
from tests.web_support import RUN_URL, chromium, person, screenshot_path, start_research

SECONDS = 90_000  # Playwright's unit: ms. A run of the scripted LLM takes seconds; this is the bound.
OIDC_CLIENT = "cairn-web"


@pytest.fixture(scope="module")
def site() -> Iterator[ResearchSite]:
    server = ResearchSite().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    server.publish("rsa-1", KEYS["rsa"])
    server.sign_in_as(KEYS["rsa"], "rsa-1", sub="ada@example.org", cairn_tenant="atlas", cairn_role="member")
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def stack(
    dev_server: DevServer,
    temporal_client: Client,
    tmp_path_factory: pytest.TempPathFactory,
    payload_dir: Path,
    site: ResearchSite,
    issuer: Issuer,
    sandbox_image: str,
) -> AsyncIterator[ApiStack]:
    async for built in sandbox_stack(
        dev_server,
        temporal_client,
        tmp_path_factory.mktemp("web"),
        payload_dir,
        site,
        CAIRN_OIDC_ISSUER=issuer.url,
        CAIRN_OIDC_AUDIENCE=AUDIENCE,
        CAIRN_OIDC_CLIENT_ID=OIDC_CLIENT,
    ):
        yield built


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async for launched in chromium():
        yield launched


async def unnamed_controls(page: Page) -> list[str]:
    """Controls on the page without an accessible name (a label, aria-label or text of their own)."""
    found: list[str] = await page.evaluate(
        """() => [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea, summary')]
            .filter(e => !(e.getAttribute('aria-label') || (e.labels && e.labels.length) ||
                           (e.textContent || '').trim() || e.getAttribute('alt')))
            .map(e => e.outerHTML.slice(0, 120))"""
    )
    return found


async def stream_ids(stack: ApiStack, run_id: str) -> list[int]:
    """The ids of every event of the run's stream, read through the API to its end."""
    ids = []
    async with await stack.client("atlas") as http, http.stream("GET", f"/v1/runs/{run_id}/events") as answer:
        async for line in answer.aiter_lines():
            if line.startswith("id:"):
                ids.append(int(line[3:].strip()))
    return ids


async def test_a_person_edits_the_plan_approves_watches_it_live_and_follows_a_citation(
    stack: ApiStack, browser: Browser, site: ResearchSite, tmp_path: Path
) -> None:
    ada = await person(browser, stack, "atlas")
    page = ada.page
    try:
        run_id = await start_research(page, "How do glaciers flow over bedrock?")
        # The plan arrives while the page is open: planning, then awaiting approval, without a reload.
        await expect(page.get_by_role("button", name="Approve")).to_be_visible(timeout=SECONDS)
        await expect(page.get_by_label("Step 3 title")).to_have_value("Investigate aspect 3 of the question")
        assert await unnamed_controls(page) == []

        await page.get_by_role("button", name="Add step").click()
        await page.get_by_label("Step 4 title").fill("Investigate aspect 4: how fast glaciers slide")
        await page.get_by_role("button", name="Delete step 2").click()
        await expect(page.get_by_text("Not saved yet")).to_be_visible()
        # What was typed into the new row survived the deletion of another.
        await expect(page.get_by_label("Step 3 title")).to_have_value(
            "Investigate aspect 4: how fast glaciers slide"
        )
        await page.get_by_label("Step 1 title").fill("Investigate aspect 1: ice deformation")
        await page.get_by_label("Step 3 kind").select_option("research")
        await page.get_by_role("button", name="Save plan").click()
        await expect(page).to_have_url(re.compile(r"\?saved=1$"))
        async with await stack.client("atlas") as api:
            plan = (await api.get(f"/v1/runs/{run_id}")).json()["plan"]
        assert plan["version"] == 2
        assert [s["title"] for s in plan["steps"]] == [
            "Investigate aspect 1: ice deformation",
            "Investigate aspect 3 of the question",
            "Investigate aspect 4: how fast glaciers slide",
        ]
        await page.screenshot(path=screenshot_path(tmp_path, "review"), full_page=True)

        # The validator's reason appears beside the step it concerns, and nothing is saved.
        await page.get_by_label("Step 2 title").fill("   ")
        await page.get_by_role("button", name="Save plan").click()
        await expect(page.locator("#error_1")).to_contain_text("a step title is empty")
        await expect(page.get_by_label("Step 2 title")).to_have_attribute("aria-invalid", "true")
        await page.goto(f"/runs/{run_id}")  # Drop the draft.

        stack.llm.latency = 0.6  # Steps take long enough to be seen running.
        await page.get_by_role("button", name="Approve").click()
        await expect(page.locator("#steps")).to_be_visible()
        await page.evaluate("window.__sameDocument = true")
        navigations: list[str] = []
        page.on(
            "framenavigated",
            lambda frame: navigations.append(frame.url) if frame == page.main_frame else None,
        )
        await expect(page.locator("#steps .status-running").first).to_be_visible(timeout=SECONDS)
        await expect(page.locator("#steps .status-done").first).to_be_visible(timeout=SECONDS)
        await expect(page.locator("#sources li").first).to_be_visible(timeout=SECONDS)
        await page.screenshot(path=screenshot_path(tmp_path, "working"), full_page=True)

        report = page.get_by_role("article", name="Report")
        await expect(report).to_be_visible(timeout=SECONDS)
        assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        assert navigations == []
        await expect(report.get_by_role("heading", level=1)).to_contain_text(
            "How do glaciers flow over bedrock?"
        )
        await page.screenshot(path=screenshot_path(tmp_path, "report"), full_page=True)
        assert await unnamed_controls(page) == []

        cite = report.locator("a.cite").first
        number = await cite.inner_text()
        await cite.click()
        await expect(page).to_have_url(re.compile(rf"#source-{number}$"))
        source = page.locator(f"#source-{number} a")
        href = await source.get_attribute("href")
        assert href is not None and href.startswith(f"{site.url}/article/")
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="Markdown", exact=True).click()
        download = await download_info.value
        async with await stack.client("atlas") as api:
            markdown = (await api.get(f"/v1/runs/{run_id}/report")).text
        assert Path(str(await download.path())).read_text() == markdown
        await source.click()
        await expect(page).to_have_url(href)
        await expect(page).to_have_title(re.compile(r"^Article \d+$"))
        assert ada.dialogs == []

        await page.goto("/runs")
        await expect(page.get_by_role("link", name="How do glaciers flow over bedrock?")).to_be_visible()
        row = page.get_by_role("row").filter(has_text="How do glaciers flow over bedrock?")
        await expect(row).to_contain_text("done")
        await expect(row).to_contain_text("3 of 3 steps")
        await page.get_by_label("Phase").select_option("done")
        await page.get_by_role("button", name="Filter").click()
        await expect(page).to_have_url(re.compile(r"phase=done"))
        await expect(page.get_by_role("link", name="How do glaciers flow over bedrock?")).to_be_visible()
        await page.get_by_label("Phase").select_option("awaiting_approval")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.get_by_role("link", name="How do glaciers flow over bedrock?")).to_have_count(0)
        await page.goto("/runs")
        await page.screenshot(path=screenshot_path(tmp_path, "runs"), full_page=True)
    finally:
        stack.llm.latency = 0.0
        await ada.close()


async def test_a_source_that_is_one_of_the_tenants_documents_opens_its_text(
    stack: ApiStack, browser: Browser, tmp_path: Path
) -> None:
    note = b"# Atlas field notes\n\nThe qwertzuiop moraine gauge logs <b>glacier</b> retreat each spring.\n"
    async with await stack.client("atlas") as api:
        uploaded = await api.post("/v1/documents", files={"file": ("field-notes.md", note)})
        assert uploaded.status_code == 201, uploaded.text
        started = await api.post(
            "/v1/runs",
            json={
                "question": "What logs retreat? [steps=1] [corpus] [pages=0] [query=qwertzuiop moraine]",
                "auto_approve": True,
            },
        )
        run_id = started.json()["id"]
    ada = await person(browser, stack, "atlas")
    globex = await person(browser, stack, "globex")
    try:
        page = ada.page
        await page.goto(f"/runs/{run_id}")
        await expect(page.get_by_role("article", name="Report")).to_be_visible(timeout=SECONDS)
        document = page.locator("ol.sources li").filter(has_text="upload:field-notes.md").get_by_role("link")
        await expect(document).to_have_text("Atlas field notes")
        await document.click()
        await expect(page).to_have_url(re.compile(r"/documents\?path=upload%3Afield-notes\.md$"))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Atlas field notes")
        # The document's text, shown as text: its markup is not markup here.
        await expect(page.locator(".passage").first).to_contain_text("logs <b>glacier</b> retreat")
        await page.screenshot(path=screenshot_path(tmp_path, "document"), full_page=True)
        assert await unnamed_controls(page) == []

        for path in ("upload:field-notes.md", "upload:nothing-here.md"):
            answer = await globex.page.goto(f"/documents?path={path}")
            assert answer is not None and answer.status == 404, path
            assert "qwertzuiop" not in await globex.page.content()
    finally:
        await ada.close()
        await globex.close()


async def test_the_run_page_catches_up_by_itself_after_the_server_restarts(
    stack: ApiStack, browser: Browser
) -> None:
    ada = await person(browser, stack, "atlas")
    page = ada.page
    try:
        run_id = await start_research(page, "How do rivers meander? [steps=2]")
        await expect(page.get_by_role("button", name="Approve")).to_be_visible(timeout=SECONDS)
        await page.evaluate("window.__sameDocument = true")
        stack.api.kill()
        try:
            # The run goes on without the API: approved through Temporal, it finishes meanwhile.
            cairn = CairnClient(stack.temporal, stack.task_queue)
            await cairn.approve(run_id)
            await asyncio.wait_for(cairn.result(run_id), 90)
            await asyncio.sleep(2)  # The page meets a dead server for a while.
        finally:
            stack.api.start()
        report = page.get_by_role("article", name="Report")
        await expect(report).to_be_visible(timeout=SECONDS)
        assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        await expect(report.get_by_role("heading", level=1)).to_contain_text("How do rivers meander?")
        # Nothing missing: the page applied the stream up to its last event.
        ids = await stream_ids(stack, run_id)
        assert ids == list(range(1, len(ids) + 1))
        await expect(page.locator("main")).to_have_attribute("data-last-event", str(ids[-1]))
    finally:
        await ada.close()


SCRIPT = "<script>window.xssRan = true</script>"
IMAGE = '<img src=x onerror="window.xssRan = true">'


async def test_hostile_text_is_shown_as_text_and_runs_nothing(
    stack: ApiStack, browser: Browser, site: ResearchSite, tmp_path: Path
) -> None:
    site.titles[1] = f"Evil page {IMAGE}"  # A source's title (web search hit and page title alike).
    ada = await person(browser, stack, "atlas")
    page = ada.page
    try:
        question = f"Why is ice slippery? {SCRIPT} {IMAGE}"
        run_id = await start_research(page, question)
        await expect(page.get_by_role("button", name="Approve")).to_be_visible(timeout=SECONDS)
        await page.get_by_label("Step 1 title").fill(f"Investigate aspect 1 {IMAGE}")
        await page.get_by_role("button", name="Save plan").click()
        await expect(page.get_by_label("Step 1 title")).to_have_value(f"Investigate aspect 1 {IMAGE}")
        stack.llm.answer_next(
            f'# Slippery ice {SCRIPT}\n\nThe model writes {IMAGE} and <b onmouseover="window.xssRan = true">bold</b>, '
            '[a link](javascript:window.xssRan=true) and <a href="javascript:window.xssRan=true">another</a>, '
            "citing [1].\n",
            role="reporter",
        )
        await page.get_by_role("button", name="Approve").click()
        report = page.get_by_role("article", name="Report")
        await expect(report).to_be_visible(timeout=SECONDS)
        await expect(page.locator("h1.question")).to_have_text(question)
        await expect(report).to_contain_text(f"The model writes {IMAGE}")
        await expect(report.get_by_role("heading", level=1)).to_have_text(f"Slippery ice {SCRIPT}")
        await expect(page.locator("ol.sources")).to_contain_text(f"Evil page {IMAGE}")
        await page.screenshot(path=tmp_path / "xss.png", full_page=True)
        for where in (f"/runs/{run_id}", "/runs"):
            await page.goto(where)
            await page.wait_for_load_state("networkidle")
            assert await page.evaluate("window.xssRan") is None, where
            injected = await page.evaluate(
                """() => ({
                    images: document.querySelectorAll('img[src="x"]').length,
                    handlers: [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length,
                    scripts: [...document.scripts].map(s => s.src),
                    javascript: document.querySelectorAll('a[href^="javascript" i]').length,
                })"""
            )
            assert injected == {
                "images": 0,
                "handlers": 0,
                "scripts": [f"{stack.api.url}/static/app.js"],
                "javascript": 0,
            }, where
        await expect(page.get_by_role("link", name=question)).to_be_visible()
        assert ada.dialogs == []
    finally:
        site.titles.clear()
        await ada.close()


async def test_another_tenant_gets_404_and_a_viewer_gets_no_control_that_acts(
    stack: ApiStack, browser: Browser, tmp_path: Path
) -> None:
    async with await stack.client("atlas") as owner:
        started = await owner.post("/v1/runs", json={"question": "Atlas's secret plan for glaciers"})
        run_id = started.json()["id"]
        for _ in range(300):
            if (await owner.get(f"/v1/runs/{run_id}")).json()["phase"] == "awaiting_approval":
                break
            await asyncio.sleep(0.1)
        globex = await person(browser, stack, "globex")
        viewer = await person(browser, stack, "atlas", "viewer")
        try:
            for suffix in ("", "/live", "/events", "/report.md", "/report.pdf", "/artifacts/chart.png"):
                answer = await globex.page.goto(f"/runs/{run_id}{suffix}")
                assert answer is not None and answer.status == 404, suffix
                assert "secret" not in await globex.page.content(), suffix
            await globex.page.goto(f"/runs/{run_id}")
            await expect(globex.page.get_by_role("alert")).to_have_text(f"no run with id {run_id}")
            await globex.page.screenshot(path=screenshot_path(tmp_path, "not-found"))
            csrf = await globex.page.locator("input[name=csrf]").first.get_attribute("value")
            for action in ("approve", "abort", "plan", "revise", "skip", "steps", "budget"):
                posted = await globex.page.request.post(f"/runs/{run_id}/{action}", form={"csrf": csrf or ""})
                assert posted.status == 404, action

            await viewer.page.goto(f"/runs/{run_id}")
            await expect(viewer.page.locator("h1.question")).to_have_text("Atlas's secret plan for glaciers")
            await expect(viewer.page.get_by_text("Investigate aspect 1 of the question")).to_be_visible()
            for name in (
                "Approve",
                "Request changes",
                "Save plan",
                "Add step",
                "Delete step 1",
                "Move step 2 up",
            ):
                await expect(viewer.page.get_by_role("button", name=name)).to_have_count(0)
            assert await viewer.page.locator("form:not([action='/signout'])").count() == 0
            assert await viewer.page.get_by_role("textbox").count() == 0
            await viewer.page.goto("/runs")
            await expect(viewer.page.get_by_role("button", name="Start research")).to_have_count(0)
            viewer_csrf = await viewer.page.locator("input[name=csrf]").first.get_attribute("value")
            refused = await viewer.page.request.post(
                f"/runs/{run_id}/approve", form={"csrf": viewer_csrf or ""}
            )
            assert refused.status == 403

            # A member's POST without the session's CSRF token, or from another origin, changes nothing.
            member = await person(browser, stack, "atlas")
            try:
                bare = await member.page.request.post(f"/runs/{run_id}/approve", form={"csrf": "guess"})
                assert bare.status == 403
                member_csrf = await member.page.locator("input[name=csrf]").first.get_attribute("value")
                foreign = await member.page.request.post(
                    f"/runs/{run_id}/approve",
                    form={"csrf": member_csrf or ""},
                    headers={"Origin": "https://evil.example"},
                )
                assert foreign.status == 403
            finally:
                await member.close()
            assert (await owner.get(f"/v1/runs/{run_id}")).json()["phase"] == "awaiting_approval"

            # While it works, the viewer sees its progress and still no control.
            stack.llm.latency = 1.0  # Long enough to find it still working.
            await owner.post(f"/v1/runs/{run_id}/approve", json={})
            await viewer.page.goto(f"/runs/{run_id}")
            await expect(viewer.page.locator("#steps")).to_be_visible()
            for name in ("Abort run", "Add step", "Raise budget"):
                await expect(viewer.page.get_by_role("button", name=name)).to_have_count(0)
            await expect(viewer.page.get_by_text("Abort…")).to_have_count(0)
            await expect(viewer.page.get_by_role("button", name=re.compile("^Skip"))).to_have_count(0)
        finally:
            stack.llm.latency = 0.0
            await owner.post(f"/v1/runs/{run_id}/abort", json={})
            await globex.close()
            await viewer.close()


async def test_a_member_skips_adds_raises_and_aborts_from_the_working_page(
    stack: ApiStack, browser: Browser
) -> None:
    ada = await person(browser, stack, "atlas")
    page = ada.page
    stack.llm.latency = 0.5
    try:
        run_id = await start_research(
            page, "How do glaciers calve? [steps=4]", **{"Parallel steps": "1", "Token budget": "900000"}
        )
        await expect(page.get_by_role("button", name="Approve")).to_be_visible(timeout=SECONDS)
        await page.get_by_label("Feedback").fill("cover tidewater glaciers")
        await page.get_by_role("button", name="Request changes").click()
        await expect(page.get_by_label("Step 5 title")).to_have_value(
            re.compile("Address feedback: cover tidewater glaciers"), timeout=SECONDS
        )
        await page.get_by_role("button", name="Approve").click()
        await expect(page.locator("#steps")).to_be_visible()
        await page.get_by_role("button", name=re.compile(r"^Skip step 4")).click()
        await expect(page.locator("#steps li").nth(3)).to_have_class(
            re.compile("status-skipped"), timeout=SECONDS
        )
        await page.get_by_label("New step title").fill("Investigate aspect 5 of calving")
        await page.get_by_role("button", name="Add step").click()
        await expect(page.locator("#steps li")).to_have_count(6, timeout=SECONDS)
        await page.get_by_label("Token budget").fill("1000000")
        await page.get_by_role("button", name="Raise budget").click()
        await expect(page.locator("#spend")).to_contain_text("of 1,000,000", timeout=SECONDS)
        await page.get_by_text("Abort…").click()
        await page.get_by_label("Reason").fill("enough for today")
        await page.get_by_role("button", name="Abort run").click()
        await expect(page.locator("#phase-line")).to_contain_text("aborted", timeout=SECONDS)
        await expect(page.locator("#phase-line")).to_contain_text("enough for today")
        async with await stack.client("atlas") as api:
            status = (await api.get(f"/v1/runs/{run_id}")).json()
        assert status["phase"] == "aborted" and status["budget"]["token_budget"] == 1_000_000
        assert [s["title"] for s in status["plan"]["steps"]][-1] == "Investigate aspect 5 of calving"
    finally:
        stack.llm.latency = 0.0
        await ada.close()


async def test_a_chart_a_code_step_made_is_shown_in_the_report(
    stack: ApiStack, browser: Browser, tmp_path: Path
) -> None:
    ada = await person(browser, stack, "atlas")
    page = ada.page
    try:
        async with await stack.client("atlas") as api:
            started = await api.post(
                "/v1/runs", json={"question": "Chart the squares [code] [steps=1]", "auto_approve": True}
            )
        run_id = started.json()["id"]
        await page.goto(f"/runs/{run_id}")
        report = page.get_by_role("article", name="Report")
        await expect(report).to_be_visible(timeout=SECONDS)
        chart = page.get_by_role("img", name="squares.png")
        await expect(chart).to_be_visible()
        # Loaded, with the session's cookie, from the run's own artifacts: a real PNG, drawn.
        assert await chart.evaluate("img => img.complete && img.naturalWidth > 100")
        link = page.get_by_role("link", name="squares.csv")
        async with page.expect_download() as download_info:
            await link.click()
        table = Path(str(await (await download_info.value).path())).read_text()
        assert table.split() == ["square", *(str(n * n) for n in range(1, 11))]
        # The report as a PDF from its download button: the chart is in the file itself.
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="PDF", exact=True).click()
        pdf = Path(str(await (await download_info.value).path()))
        assert pdf.read_bytes().startswith(b"%PDF-")
        _, images, _ = await run("pdfimages", "-list", str(pdf))
        assert [row.split()[2] for row in images.splitlines()[2:]].count("image") == 1
        await page.screenshot(path=screenshot_path(tmp_path, "artifacts"), full_page=True)
    finally:
        await ada.close()


async def test_a_person_answers_the_planners_clarifying_questions(stack: ApiStack, browser: Browser) -> None:
    ada = await person(browser, stack, "atlas")
    page = ada.page
    try:
        await start_research(page, "Which battery is best? [ambiguous] [steps=1]")
        await expect(page.get_by_role("heading", name="The planner asks, before it plans")).to_be_visible(
            timeout=SECONDS
        )
        await expect(page.locator("ol.questions li")).to_have_text(
            ["Which region do you mean?", "Over what period?"]
        )
        await page.get_by_role("button", name="Send answer").click()  # Nothing written: refused.
        await expect(page.get_by_role("alert")).to_have_text("the answer is empty")
        await page.get_by_label("Your answer").fill("Grid storage in Europe")
        await page.get_by_role("button", name="Send answer").click()
        # The plan the answer shaped arrives for approval.
        await expect(page.get_by_role("button", name="Approve")).to_be_visible(timeout=SECONDS)
        await expect(page.get_by_label("Step 1 Title")).to_have_value("Focus on Grid storage in Europe")
    finally:
        await ada.close()


async def test_a_person_follows_up_a_run_searches_the_library_and_keeps_schedules(
    stack: ApiStack, browser: Browser, site: ResearchSite, tmp_path: Path
) -> None:
    async with await stack.client("atlas") as api:
        started = await api.post(
            "/v1/runs", json={"question": "Glacier flow first? [steps=1]", "auto_approve": True}
        )
        run_id = started.json()["id"]
    ada = await person(browser, stack, "atlas")
    viewer = await person(browser, stack, "atlas", "viewer")
    globex = await person(browser, stack, "globex")
    try:
        page = ada.page
        # A follow-up from the finished run's page: a new run whose report says what changed since.
        await page.goto(f"/runs/{run_id}")
        await expect(page.get_by_role("article", name="Report")).to_be_visible(timeout=SECONDS)
        await page.get_by_label("Question").fill("Glacier flow since? [steps=1]")
        await page.get_by_label("Approve the plan automatically").check()
        await page.get_by_role("button", name="Start the follow-up").click()
        await expect(page).to_have_url(RUN_URL)
        assert run_id not in page.url
        report = page.get_by_role("article", name="Report")
        await expect(report).to_be_visible(timeout=SECONDS)
        await expect(report.get_by_role("heading", name=re.compile("^What changed since"))).to_be_visible()
        await expect(report).to_contain_text(f"Compared with run {run_id}")
        await viewer.page.goto(f"/runs/{run_id}")
        await expect(viewer.page.get_by_role("article", name="Report")).to_be_visible()
        assert await viewer.page.get_by_role("button", name="Start the follow-up").count() == 0

        # The library: what the finished runs read and found, each leading where it came from; another
        # tenant's search of it finds nothing.
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Library").click()
        await page.get_by_label("Search the library").fill("glacier flow")
        await page.get_by_role("button", name="Search").click()
        await expect(page).to_have_url(re.compile(r"/library\?q=glacier\+flow$"))
        hits = page.locator("article.passage-hit")
        await expect(hits.first).to_be_visible()
        links = [await a.get_attribute("href") for a in await hits.get_by_role("link").all()]
        # Pages the runs read, and findings of this tenant's runs (earlier tests' runs match too).
        assert any(h and h.startswith(site.url) for h in links), links
        assert all(h and h.startswith((site.url, "/runs/atlas.")) for h in links), links
        assert len(links) == len(set(links))  # each once, at its best passage
        await page.get_by_label("Search the library").fill("investigate aspect")
        await page.get_by_role("button", name="Search").click()
        await expect(page).to_have_url(re.compile(r"/library\?q=investigate\+aspect$"))
        await page.screenshot(path=screenshot_path(tmp_path, "library"), full_page=True)
        links = [await a.get_attribute("href") for a in await hits.get_by_role("link").all()]
        assert f"/runs/{run_id}" in links, links  # a finding, at the run that found it
        assert await unnamed_controls(page) == []
        await globex.page.goto("/library?q=glacier+flow")
        await expect(globex.page.get_by_text("Nothing in the library matches.")).to_be_visible()

        # Schedules: a cron Temporal cannot read is refused with its reason; a good one is listed.
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules").click()
        await expect(page).to_have_url(re.compile(r"/schedules$"))
        await expect(page.get_by_text("No schedules yet.")).to_be_visible()
        await page.get_by_label("Question", exact=True).fill("Glacier flow this year? [steps=1]")
        await page.get_by_label("Cron").fill("every day at noon")
        await page.get_by_role("button", name="Create schedule").click()
        await expect(page.get_by_role("alert")).to_contain_text("cannot create the schedule")
        await expect(page.get_by_label("Question", exact=True)).to_have_value(
            "Glacier flow this year? [steps=1]"
        )
        await page.get_by_label("Cron").fill("0 0 1 1 *")
        await page.get_by_label("Time zone").fill("Europe/Oslo")
        await page.get_by_label("Approve each plan automatically").check()
        await page.get_by_role("button", name="Create schedule").click()
        await expect(page).to_have_url(re.compile(r"/schedules$"))
        row = page.locator("tr", has_text="Glacier flow this year?")
        await expect(row).to_contain_text("0 0 1 1 * (Europe/Oslo), approved automatically")
        await expect(row).to_contain_text("active")
        assert await unnamed_controls(page) == []

        # Run now: the run it starts is linked from the row once Temporal has started it.
        await row.get_by_role("button", name=re.compile("^Run now")).click()
        latest = row.get_by_role("link")
        for _ in range(100):
            if await latest.count():
                break
            await asyncio.sleep(0.2)
            await page.reload()
        await latest.click()
        await expect(page).to_have_url(re.compile(r"/runs/atlas\.sched-[0-9a-f]{12}-"))
        await expect(page.get_by_role("article", name="Report")).to_be_visible(timeout=SECONDS)
        await page.goto("/schedules")
        await page.screenshot(path=screenshot_path(tmp_path, "schedules"), full_page=True)
        await row.get_by_role("button", name=re.compile("^Pause")).click()
        await expect(row).to_contain_text("paused")
        await expect(row.get_by_role("button", name=re.compile("^Resume"))).to_be_visible()

        # A viewer sees it and cannot act; another tenant neither sees it nor reaches it.
        await viewer.page.goto("/schedules")
        await expect(viewer.page.locator("tr", has_text="Glacier flow this year?")).to_be_visible()
        assert (
            await viewer.page.get_by_role("button")
            .filter(has_text=re.compile("Run now|Delete|Resume"))
            .count()
            == 0
        )
        schedule_id = (await row.get_attribute("id") or "").removeprefix("schedule-")
        assert schedule_id.startswith("atlas.sched-")
        await globex.page.goto("/schedules")
        await expect(globex.page.get_by_text("No schedules yet.")).to_be_visible()
        csrf = await globex.page.locator("input[name=csrf]").first.get_attribute("value")
        for action in ("pause", "unpause", "trigger", "delete"):
            posted = await globex.page.request.post(
                f"/schedules/{schedule_id}/{action}", form={"csrf": csrf or ""}
            )
            assert posted.status == 404, action

        await row.get_by_role("button", name=re.compile("^Delete")).click()
        await expect(page.get_by_text("No schedules yet.")).to_be_visible()
    finally:
        await ada.close()
        await viewer.close()
        await globex.close()


async def tab_to(page: Page, name: str, presses: int = 80) -> None:
    """Press Tab until the focused control's accessible name is `name`."""
    for _ in range(presses):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            """() => { const e = document.activeElement; if (!e) return '';
                return (e.getAttribute('aria-label') || (e.labels && e.labels[0] && e.labels[0].innerText) ||
                        e.innerText || '').trim(); }"""
        )
        if focused == name:
            return
    raise AssertionError(f"Tab never reached {name!r}")


async def test_keyboard_only_sign_in_start_and_approve(
    stack: ApiStack, browser: Browser, tmp_path: Path
) -> None:
    someone = await person(browser, stack, None)
    page = someone.page
    try:
        await page.goto("/signin")
        await page.screenshot(path=screenshot_path(tmp_path, "signin"))
        assert await unnamed_controls(page) == []
        # The API key field has the focus on arrival.
        await page.keyboard.type(await stack.key("atlas"))
        await page.keyboard.press("Enter")
        await expect(page).to_have_url(re.compile(r"/runs$"))
        assert await unnamed_controls(page) == []
        await tab_to(page, "Question")
        await page.keyboard.type("How do icebergs drift? [steps=2]")
        await tab_to(page, "Start research")
        await page.keyboard.press("Enter")
        await expect(page).to_have_url(RUN_URL)
        await expect(page.get_by_role("button", name="Approve")).to_be_visible(timeout=SECONDS)
        await tab_to(page, "Approve")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("article", name="Report")).to_be_visible(timeout=SECONDS)
    finally:
        await someone.close()


async def test_signing_in_with_the_identity_provider(
    stack: ApiStack, browser: Browser, issuer: Issuer
) -> None:
    ada = await person(browser, stack, None)
    page = ada.page
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if "/auth/callback" in r.url else None)
    try:
        await page.goto("/runs")
        await expect(page).to_have_url(re.compile(r"/signin\?next=/runs$"))
        await page.get_by_role("link", name="Sign in with your organisation").click()
        await expect(page).to_have_url(re.compile(r"/runs$"))
        await expect(page.get_by_text("ada@example.org")).to_be_visible()
        await expect(page.get_by_role("button", name="Start research")).to_be_visible()
        exchange = issuer.exchanges[-1]
        assert exchange["client_id"] == OIDC_CLIENT and len(exchange["code_verifier"]) >= 43
        assert exchange["redirect_uri"] == f"{stack.api.url}/auth/callback"

        # A callback is good once, and only in the browser that started the sign-in: even with the
        # state's cookie put back, the code is not exchanged again.
        state = re.search(r"state=([^&]+)", callbacks[0])
        assert state is not None
        await ada.context.add_cookies(
            [{"name": "cairn_oidc_state", "value": state.group(1), "url": f"{stack.api.url}/auth/callback"}]
        )
        replayed = await page.goto(callbacks[0])
        assert replayed is not None and replayed.status == 400
        await expect(page.get_by_role("alert")).to_contain_text("expired or was already used")
        stranger = await person(browser, stack, None)
        try:
            elsewhere = await stranger.page.goto(callbacks[0])
            assert elsewhere is not None and elsewhere.status == 400
            await expect(stranger.page.get_by_role("alert")).to_contain_text("not started in this browser")
        finally:
            await stranger.close()
        assert len(issuer.exchanges) == 1
        # The provider's one-time code never reaches the server's log.
        assert exchange["code"] not in stack.api.log() and "/auth/callback?(redacted)" in stack.api.log()

        await page.goto("/runs")
        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(re.compile(r"/signin$"))
        await page.goto("/runs")
        await expect(page).to_have_url(re.compile(r"/signin\?next=/runs$"))
    finally:
        await ada.close()


async def test_sessions_are_server_side_cookies_that_scripts_cannot_read(stack: ApiStack) -> None:
    key = await stack.key("atlas")
    async with httpx.AsyncClient(base_url=stack.api.url) as http:
        form = await http.get("/signin")
        assert "script-src 'self'" in form.headers["content-security-policy"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        refused = await http.post("/signin", data={"api_key": key, "csrf": "forged", "next": "/runs"})
        assert refused.status_code == 403 and "cairn_session" not in refused.headers.get("set-cookie", "")
        csrf = re.search(r'name="csrf" value="([^"]+)"', refused.text)  # The refusal gave a fresh token.
        assert csrf is not None
        answer = await http.post(
            "/signin", data={"api_key": key, "csrf": csrf.group(1), "next": "//evil.example/x"}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/runs"  # Never another site.
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("cairn_session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        assert "Max-Age=43200" in cookie  # CAIRN_WEB_SESSION_HOURS, 12 by default.
        token = cookie.split(";", 1)[0].split("=", 1)[1]
        assert (await http.get("/runs")).status_code == 200
        # The session opens the web app, not the API: /v1 still wants a bearer credential.
        assert (await http.get("/v1/runs")).status_code == 401
        assert (await http.get("/v1/runs", headers={"Authorization": f"Bearer {key}"})).status_code == 200

    # Behind an HTTPS proxy on this machine the cookie is Secure, with the __Host- prefix.
    async with httpx.AsyncClient(base_url=stack.api.url, headers={"X-Forwarded-Proto": "https"}) as https:
        form = await https.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        # The csrf cookie is Secure now, so a client on plain http would not send it back by itself.
        answer = await https.post(
            "/signin",
            data={"api_key": key, "csrf": csrf.group(1)},
            headers={"Cookie": f"cairn_csrf={csrf.group(1)}"},
        )
        cookie = next(
            c for c in answer.headers.get_list("set-cookie") if c.startswith("__Host-cairn_session=")
        )
        assert (
            "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        )

    # Revoking the key ends its sessions at their next request.
    from client.server.keys import KeyStore

    store = await KeyStore.open({"CAIRN_HOME": str(stack.home)})
    try:
        secret, record = await store.create("atlas", "member", "to revoke")
        async with httpx.AsyncClient(base_url=stack.api.url) as http:
            form = await http.get("/signin")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf is not None
            await http.post("/signin", data={"api_key": secret, "csrf": csrf.group(1)})
            assert (await http.get("/runs")).status_code == 200
            assert await store.revoke(record.id)
            gone = await http.get("/runs")
            assert gone.status_code == 303 and gone.headers["location"].startswith("/signin")
    finally:
        await store.close()
    log = stack.api.log()
    assert key not in log and secret not in log and token not in log
    assert json.dumps(token) not in log


def test_the_web_session_lasts_as_configured_within_bounds() -> None:
    assert ServerConfig.from_env({"CAIRN_WEB_SESSION_HOURS": "1.5"}).session_hours == 1.5
    assert ServerConfig.from_env({}).session_hours == 12
    for bad in ("0", "-1", "721", "soon"):
        with pytest.raises(ConfigError, match="CAIRN_WEB_SESSION_HOURS"):
            ServerConfig.from_env({"CAIRN_WEB_SESSION_HOURS": bad})

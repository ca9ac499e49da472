"""The web app's tests' stack and a person at a browser: `cairn serve` with its worker, the scripted
LLM, a loopback web for the researcher, a loopback OIDC provider, and Playwright driving Debian's
Chromium.

Why this exists: what the web app promises (a page that follows a run live, survives the server's
restart, shows hostile text as text, hides controls from a viewer) only shows in a real browser against
the real server. Chromium is Debian's (`shutil.which("chromium")`); no browser is downloaded.

Set CAIRN_WEB_SCREENSHOTS=docs to refresh the screenshots the README and docs/web-app.md show.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.api_support import ApiStack

ROOT = Path(__file__).resolve().parent.parent
RUN_URL = re.compile(r"/runs/[A-Za-z0-9_.-]+$")


async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright; fails (never skips) when it is missing."""
    executable = shutil.which("chromium")
    if executable is None:
        raise FileNotFoundError(
            "chromium is not installed: run `bash install.sh --test` (apt package chromium)"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


def screenshot_path(tmp: Path, name: str) -> Path:
    """Where a page's screenshot goes: the test's directory, or docs/ when asked to refresh them."""
    if os.environ.get("CAIRN_WEB_SCREENSHOTS") == "docs":
        return ROOT / "docs" / f"web-{name}.png"
    return tmp / f"web-{name}.png"


@dataclass
class Person:
    """A person at a browser of their own (their own cookies), signed in to one tenant with one role."""

    context: BrowserContext
    page: Page
    dialogs: list[str]

    async def close(self) -> None:
        await self.context.close()


async def person(browser: Browser, stack: ApiStack, tenant: str | None, role: str = "member") -> Person:
    """A new browser context; signed in through the sign-in form with a key when `tenant` is given."""
    context = await browser.new_context(base_url=stack.api.url, viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    dialogs: list[str] = []

    async def refuse(dialog: Any) -> None:  # An alert would mean injected script ran.
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", refuse)
    if tenant is not None:
        await page.goto("/signin")
        await page.get_by_label("API key").fill(await stack.key(tenant, role))  # type: ignore[arg-type]
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(re.compile(r"/runs$"))
    return Person(context, page, dialogs)


async def start_research(page: Page, question: str, **options: str) -> str:
    """Start a run through the New research form; the run's id, from the page it leads to."""
    await page.goto("/runs")
    await page.get_by_label("Question").fill(question)
    if options:
        await page.get_by_text("Options").click()
        for label, value in options.items():
            await page.get_by_label(label).fill(value)
    await page.get_by_role("button", name="Start research").click()
    await expect(page).to_have_url(RUN_URL)
    return page.url.rsplit("/", 1)[1]

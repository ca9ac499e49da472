"""The Temporal Web UI as the run's dashboard, seen in headless Chromium as a person sees it: a run that
waits for approval shows its plan and the exact command that approves it.

Set CAIRN_UI_SCREENSHOT=docs/web-ui.png to refresh the README's screenshot from this test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from client.api import CairnClient
from client.embedded import wait_for_port
from common.config import ModelPrice, TemporalConfig
from common.plugin import connect
from testkit.browser import Browser, chromium
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import llm_config
from tests.helpers import wait_for
from worker import build_worker

QUESTION = "How do durable execution engines recover from worker crashes? [steps=3]"


@pytest.fixture
def ui_server(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(db_file=tmp_path / "ui.db", ui=True).start()
    assert server.ui_port is not None
    wait_for_port(server.ui_port, 60)
    yield server
    server.stop()


def test_chromium_is_installed() -> None:
    """Fails (never skips) on a machine without it: `bash install.sh --test` installs it."""
    assert Path(chromium()).exists()


async def test_web_ui_shows_the_plan_and_the_approve_command(
    ui_server: DevServer, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> None:
    client = await connect(TemporalConfig.from_env({"TEMPORAL_ADDRESS": ui_server.address}), tracing=None)
    config = replace(llm_config(llm), prices={"gpt-4o-mini": ModelPrice(input=0.15, output=0.60)})
    async with build_worker(client, task_queue, config, home=tmp_path):
        cairn = CairnClient(client, task_queue)
        wid = await cairn.start(QUESTION, workflow_id=f"research-{task_queue[-10:]}")
        await wait_for(cairn, wid, "awaiting_approval")
        url = f"http://127.0.0.1:{ui_server.ui_port}/namespaces/default/workflows/{wid}"
        async with Browser(size=(1400, 1000)) as page:
            await page.goto(url)
            await page.wait_for_text(wid, "User Metadata")
            # The current details live on the workflow's "User Metadata" tab; a person clicks it.
            deadline = time.monotonic() + 30
            while not await page.click("User Metadata"):
                assert time.monotonic() < deadline, "no User Metadata tab"
            shown = await page.wait_for_text(
                "Current Details",
                f"cairn approve {wid}",
                "Awaiting approval of plan v1",
                "Plan v1",
                "Investigate aspect 1 of the question",
                "Investigate aspect 3 of the question",
                "Spend:",
            )
            assert "Phase: awaiting_approval" in shown and "$0.0000" not in shown
            shot = await page.screenshot(
                Path(os.environ.get("CAIRN_UI_SCREENSHOT") or tmp_path / "web-ui.png")
            )
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
        await cairn.abort(wid, "test over")
        await cairn.result(wid)

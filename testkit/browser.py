"""Headless Chromium (Debian's `chromium`) for tests that look at the Temporal Web UI as a person would.

Why this exists: the Web UI is Cairn's dashboard, and only a real browser running its single-page app
shows what a person sees. Chromium runs headless, without its sandbox (tests may run as root), without
background networking and with a throwaway profile, driven over the DevTools protocol: the page of a
running workflow long-polls its history, so `--dump-dom` with a virtual-time budget never returns;
instead the test waits until the rendered text shows what it expects, then reads it or takes a picture.

Must never: skip when Chromium is missing (the caller fails with the reason), or reach beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium() -> str:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise FileNotFoundError("chromium is not installed: run `bash install.sh --test` (apt package chromium)")


class Browser:
    """One headless Chromium with one page: `async with Browser(size) as page: await page.goto(url)`."""

    def __init__(self, size: tuple[int, int] = (1400, 1000)) -> None:
        self.size = size
        self._profile = tempfile.TemporaryDirectory(prefix="cairn-chromium-", ignore_cleanup_errors=True)
        self._process: asyncio.subprocess.Process | None = None
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        self._process = await asyncio.create_subprocess_exec(
            chromium(),
            *FLAGS,
            f"--window-size={self.size[0]},{self.size[1]}",
            f"--user-data-dir={self._profile.name}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port = await self._devtools_port()
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list", timeout=10)).json()
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        await self.send("Page.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1, "mobile": False},
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._profile.cleanup()

    async def _devtools_port(self, seconds: float = 30) -> int:
        """Chromium writes the port it chose into the profile once DevTools listens."""
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self._process is not None and self._process.returncode is not None:
                raise RuntimeError(f"chromium exited {self._process.returncode} at start")
            await asyncio.sleep(0.1)
        raise TimeoutError("chromium's DevTools never came up")

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are skipped."""
        assert self._ws is not None
        ident = next(self._ids)
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        while True:
            message = json.loads(await asyncio.wait_for(self._ws.recv(), 60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def _evaluate(self, expression: str, context: int | None = None) -> Any:
        params: dict[str, Any] = {"expression": expression, "returnByValue": True}
        if context is not None:
            params["contextId"] = context
        return (await self.send("Runtime.evaluate", params)).get("result", {}).get("value")

    async def text(self) -> str:
        """The rendered text of the page and of its frames (the Web UI renders a workflow's markdown
        details in an iframe of its own)."""
        parts = [str(await self._evaluate("document.body ? document.body.innerText : ''") or "")]
        tree = (await self.send("Page.getFrameTree"))["frameTree"]
        frames = list(tree.get("childFrames") or [])
        while frames:
            frame = frames.pop()
            frames += frame.get("childFrames") or []
            try:
                world = await self.send("Page.createIsolatedWorld", {"frameId": frame["frame"]["id"]})
                parts.append(
                    str(
                        await self._evaluate(
                            "document.body ? document.body.innerText : ''", world["executionContextId"]
                        )
                        or ""
                    )
                )
            except RuntimeError:
                continue  # A frame that went away between the two calls.
        return "\n".join(parts)

    async def click(self, label: str) -> bool:
        """Click the tab, link or button whose text is `label`; False when there is none yet."""
        script = (
            "(() => { const e = [...document.querySelectorAll('[role=tab],a,button')]"
            f".find(e => e.innerText.trim() === {json.dumps(label)}); if (e) e.click(); return !!e; }})()"
        )
        return bool(await self._evaluate(script))

    async def wait_for_text(self, *needles: str, seconds: float = 60) -> str:
        """The page's rendered text once it contains every needle; fails with what it showed."""
        deadline = time.monotonic() + seconds
        shown = ""
        while time.monotonic() < deadline:
            shown = await self.text()
            if all(n in shown for n in needles):
                return shown
            await asyncio.sleep(0.5)
        missing = [n for n in needles if n not in shown]
        raise AssertionError(f"the page never showed {missing}; it showed:\n{shown[:4000]}")

    async def screenshot(self, out: Path) -> Path:
        data = await self.send("Page.captureScreenshot", {"format": "png"})

        def write() -> None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(base64.b64decode(data["data"]))

        await asyncio.to_thread(write)
        return out

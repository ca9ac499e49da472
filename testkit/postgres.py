"""A real PostgreSQL for tests and benchmarks: the one in CAIRN_TEST_DATABASE_URL, or a throwaway cluster.

Why this exists: the corpus's PostgreSQL store (BM25 over tsvector, schema races, transactions) only
means something against the real server, so a test session starts one from Debian's `postgresql`
package (`./install.sh --test` installs it) instead of skipping. The cluster lives in a temp dir, listens
on 127.0.0.1 on a free port and on a socket in that dir, trusts local connections, and runs without
fsync: it is disposable.

Must never: listen on an outside address, touch a cluster it did not create (an external
CAIRN_TEST_DATABASE_URL is only used, never stopped), or run the server as root (PostgreSQL refuses;
we switch to the `postgres` OS user the package creates).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from testkit import processes
from testkit.dev_server import free_port

DATABASE = "cairn_test"


class PostgresError(RuntimeError):
    """PostgreSQL could not be started; the message says why (and shows its log)."""


def _bin_dir() -> Path:
    """The newest installed server's bin dir: Debian keeps initdb and postgres off PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresError(
        "no PostgreSQL server is installed (looked in /usr/lib/postgresql/*/bin and PATH): run "
        "`./install.sh --test` (Debian's postgresql), or set CAIRN_TEST_DATABASE_URL to a database"
    )


def _as_server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """A command prefix that drops root to the `postgres` user, since initdb and postgres refuse root.
    setpriv execs in place (so our child *is* the server); runuser is the fallback."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("running as root, but there is no `postgres` user to run the server as") from None
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"], user
    return ["runuser", "-u", "postgres", "--"], user


class PostgresServer:
    def __init__(self) -> None:
        self._external = os.environ.get("CAIRN_TEST_DATABASE_URL") or None
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._prefix: list[str] = []
        self.port = 0

    @property
    def dsn(self) -> str:
        if self._external:
            return self._external
        assert self._process is not None, "start() first"
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> PostgresServer:
        if self._external:
            return self
        bin_dir = _bin_dir()
        self._prefix, user = _as_server_user()
        # Under /tmp rather than pytest's tmp dir: the server user must be able to reach it, and a
        # socket path must stay short (about 100 bytes).
        self._dir = Path(tempfile.mkdtemp(prefix="cairn-pg-"))
        if user is not None:
            os.chown(self._dir, user.pw_uid, user.pw_gid)
        data = self._dir / "data"
        self._run(
            str(bin_dir / "initdb"), "-D", str(data), "--username=postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        for attempt in range(3):
            try:
                self._launch(bin_dir, data)
                break
            except PostgresError as err:
                # Another process may take the port between free_port() and bind: try another one.
                if attempt == 2 or "could not bind" not in str(err):
                    self.stop()
                    raise
        with psycopg.connect(self._admin_dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        return self

    def _admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._prefix, *command], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PostgresError(
                f"{Path(command[0]).name} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def _launch(self, bin_dir: Path, data: Path, seconds: float = 60) -> None:
        assert self._dir is not None
        self.port = free_port()
        log_path = self._dir / "postgres.log"
        command = [
            *self._prefix, str(bin_dir / "postgres"), "-D", str(data), "-k", str(self._dir),
            "-h", "127.0.0.1", "-p", str(self.port),
            # A throwaway cluster: durability buys nothing and costs seconds per test session.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + seconds
        while True:
            if self._process.poll() is not None:
                self._process = None
                log_text = log_path.read_text(errors="replace")[-2000:]
                raise PostgresError(f"postgres exited while starting on 127.0.0.1:{self.port}:\n{log_text}")
            try:
                with psycopg.connect(self._admin_dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                pass  # Still starting ("the database system is starting up" or not listening yet).
            if time.monotonic() > deadline:
                raise PostgresError(f"postgres on 127.0.0.1:{self.port} never accepted connections")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._external:
            return
        if self._process is not None and self._dir is not None:
            bin_dir = _bin_dir()
            pg_ctl = [str(bin_dir / "pg_ctl"), "stop", "-D", str(self._dir / "data"), "-m", "fast", "-w"]
            subprocess.run([*self._prefix, *pg_ctl], capture_output=True, check=False)
            processes.wait_or_kill(self._process, 30)
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

"""Blocking Docker operations of the code sandbox: create a locked-down container, run one program in
it, kill and remove it, and reap containers whose owner is gone.

Why this exists: it is the one place that knows how a sandbox container is configured and how the
program reaches it. Everything here blocks, so async callers run it in a thread (see runner.py).

Must never: mount the Docker socket or any host path into a container, pass the worker's environment in
(the environment is the explicit SANDBOX_ENV below), give a container a network, or trust what comes out
of a container (every read is capped, the host keeps its own deadline, and the report is parsed against
`BootstrapReport` and the configured limits before anything else reads it).
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources
import json
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import docker
import docker.errors
from docker.types import LogConfig, Ulimit
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from temporalio.exceptions import ApplicationError

from activities.sandbox.config import SandboxConfig
from common import errors
from common.sandbox_models import (
    MAX_SKIPPED_LISTED,
    clip,
)

LABEL = "cairn.sandbox"
LABEL_OWNER = "cairn.owner"  # "<hostname>|<pid>|<process start ticks>" of the creating process
LABEL_INSTANCE = "cairn.instance"  # which engine object in that process
LABEL_RUN = "cairn.run"  # a fresh id per container, for logs
LABEL_DEADLINE = "cairn.deadline"  # unix time after which the run is over for sure (cold runs only)
LABEL_WORKFLOW = "cairn.workflow_id"
LABEL_ACTIVITY = "cairn.activity_id"

SANDBOX_UID = 10001
# The whole environment of a sandbox. Nothing from the worker's environment is ever added: keys live
# there. One BLAS/OpenMP thread, because every thread counts against the pids limit.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/workspace",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "MPLBACKEND": "Agg",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
# The supervisor each container runs as PID 1. It lives with the image it runs in; read as package data
# so a source checkout and an installed wheel find it alike.
_BOOTSTRAP = importlib.resources.files("sandbox_images").joinpath("bootstrap.py").read_text()
_STDERR_KEEP = 64 * 1024

# Engine objects alive in this process, so the reaper can tell "ours and in use" from "leaked by an
# engine that was closed" when both carry this process's owner label.
_LIVE_INSTANCES: dict[str, SandboxEngine] = {}


def _process_start_ticks(pid: int) -> str | None:
    """The start time of `pid` from /proc, so a recycled pid is not mistaken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); split after the ")" that closes the command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def owner_identity(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}|{pid}|{_process_start_ticks(pid) or '?'}"


def _owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it lives on another host (cannot tell)."""
    try:
        host, pid, ticks = owner.split("|")
    except ValueError:
        return False  # malformed label: not ours to keep
    if host != socket.gethostname():
        return None
    return pid.isdigit() and _process_start_ticks(int(pid)) == ticks


# -- the report ---------------------------------------------------------------------------------

# Longest artifact name in a report; the bootstrap is told this limit and shortens longer names.
REPORT_NAME_CHARS = 512
_COUNT = 2**53  # no count or size in a report comes near this


def _base64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as err:
        raise ValueError(f"not base64 ({err})") from err


Base64 = Annotated[bytes, PlainValidator(_base64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReportStream(_Strict):
    head: Base64
    tail: Base64
    total: int = Field(ge=0, le=_COUNT)


class ReportArtifact(_Strict):
    name: str = Field(min_length=1, max_length=REPORT_NAME_CHARS)
    size: int = Field(ge=0, le=_COUNT)
    data: Base64


class ReportSkipped(_Strict):
    name: str = Field(min_length=1, max_length=REPORT_NAME_CHARS)
    size: int = Field(ge=0, le=_COUNT)
    reason: str = Field(max_length=200)


class BootstrapReport(_Strict):
    """The one line the bootstrap writes, as the host accepts it. Every field is required, typed and
    bounded; limits that depend on the configuration are checked against the `SandboxConfig` passed
    as validation context."""

    cairn_report: Literal[1]
    exit_code: int = Field(ge=-128, le=255)  # negative: killed by that signal
    timed_out: bool
    duration_ms: int = Field(ge=0, le=_COUNT)
    stdout: ReportStream
    stderr: ReportStream
    oom_kills: int | None = Field(ge=0, le=_COUNT)
    pids_max_events: int | None = Field(ge=0, le=_COUNT)
    artifacts: list[ReportArtifact]
    artifacts_skipped: list[ReportSkipped] = Field(max_length=MAX_SKIPPED_LISTED)
    artifacts_skipped_unlisted: int = Field(ge=0, le=_COUNT)

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> BootstrapReport:
        cfg = info.context
        if not isinstance(cfg, SandboxConfig):
            raise ValueError("parse reports with parse_report(), which supplies the limits")
        for label, stream in (("stdout", self.stdout), ("stderr", self.stderr)):
            kept = len(stream.head) + len(stream.tail)
            if kept > cfg.output_cap_bytes or kept > stream.total:
                raise ValueError(f"{label} keeps {kept} bytes of {stream.total} (cap {cfg.output_cap_bytes})")
        if len(self.artifacts) > cfg.max_artifacts:
            raise ValueError(f"{len(self.artifacts)} artifacts (limit {cfg.max_artifacts})")
        for a in self.artifacts:
            if a.size != len(a.data) or a.size > cfg.max_artifact_bytes:
                raise ValueError(
                    f"artifact size {a.size} with {len(a.data)} bytes (limit {cfg.max_artifact_bytes})"
                )
        total = sum(a.size for a in self.artifacts)
        if total > cfg.max_artifacts_total_bytes:
            raise ValueError(f"artifacts total {total} bytes (limit {cfg.max_artifacts_total_bytes})")
        return self


def parse_report(line: bytes, config: SandboxConfig) -> BootstrapReport:
    """Validate the bootstrap's report line; anything that does not fit is a non-retryable error, since
    a rerun of the same program would produce the same report."""
    try:
        return BootstrapReport.model_validate_json(line, context=config)
    except ValidationError as err:
        found = err.errors(include_url=False, include_input=False)
        problems = [f"{'.'.join(map(str, e['loc'])) or 'report'}: {e['msg']}" for e in found[:5]]
        if len(found) > 5:
            problems.append(f"{len(found) - 5} more problems")
        raise ApplicationError(
            clip("sandbox report invalid: " + "; ".join(problems), 1000),
            type=errors.SANDBOX_REPORT_INVALID,
            non_retryable=True,
        ) from None


def _report_too_large(limit: int) -> ApplicationError:
    return ApplicationError(
        f"sandbox report invalid: more than {limit} bytes",
        type=errors.SANDBOX_REPORT_INVALID,
        non_retryable=True,
    )


@dataclass
class RawRun:
    """What came back from one container: the bootstrap's validated report, or why there is none."""

    report: BootstrapReport | None
    stderr: bytes  # the bootstrap's own stderr (its crash, if any), capped
    host_timed_out: bool = False
    exit_code: int | None = None  # container exit code when there was no report
    oom_killed: bool = False  # Docker's view, when there was no report


class SandboxEngine:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.instance = uuid.uuid4().hex[:12]
        self.owner = owner_identity()
        self._client: docker.DockerClient | None = None
        # Containers this engine created and has not removed yet; the reaper leaves these alone.
        self.tracked: set[str] = set()
        _LIVE_INSTANCES[self.instance] = self

    # -- connection and image -------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        # Connect lazily: a worker must start (and serve other activities) while the engine is down.
        if self._client is None:
            try:
                self._client = docker.from_env(version="auto", timeout=60)
            except docker.errors.DockerException as err:
                raise ApplicationError(
                    f"Docker engine unavailable ({err}); run sandbox_images/engine.sh",
                    type=errors.SANDBOX_ENGINE_UNAVAILABLE,
                ) from err
        return self._client

    def check_image(self) -> None:
        try:
            self.client.images.get(self.config.image)
        except docker.errors.ImageNotFound as err:
            raise _image_missing(self.config.image) from err
        except docker.errors.DockerException as err:
            raise _engine_error(err) from err

    def close(self) -> None:
        _LIVE_INSTANCES.pop(self.instance, None)
        if self._client is not None:
            self._client.close()

    # -- container lifecycle --------------------------------------------------------------------

    def create_started(self, extra_labels: dict[str, str] | None = None) -> str:
        """Create and start one sandbox; its bootstrap then idles until a program arrives on stdin."""
        cfg = self.config
        labels = {
            LABEL: "1",
            LABEL_OWNER: self.owner,
            LABEL_INSTANCE: self.instance,
            LABEL_RUN: uuid.uuid4().hex[:12],
            **(extra_labels or {}),
        }
        try:
            api = self.client.api
            host_config = api.create_host_config(
                network_mode="none",
                read_only=True,
                tmpfs={
                    "/tmp": f"rw,nosuid,nodev,noexec,size={cfg.tmp_mib}m,mode=1777",
                    "/workspace": (
                        f"rw,nosuid,nodev,noexec,size={cfg.workspace_mib}m,"
                        f"uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0755"
                    ),
                },
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                ipc_mode="private",
                pids_limit=cfg.pids,
                mem_limit=f"{cfg.memory_mib}m",
                memswap_limit=f"{cfg.memory_mib}m",  # equal to mem_limit: no swap
                nano_cpus=int(cfg.cpus * 1e9),
                ulimits=[Ulimit(name="core", soft=0, hard=0)],
                # Output comes over the attach stream and is capped there; a log driver would copy an
                # unbounded flood onto the host's disk.
                log_config=LogConfig(type=LogConfig.types.NONE),
            )
            # The low-level call: it is the one that sets StdinOnce (detach=False + stdin_open), so the
            # program's stdin closes when we finish sending the request.
            created = api.create_container(
                cfg.image,
                command=["python3", "-I", "-c", _BOOTSTRAP],
                detach=False,
                stdin_open=True,
                tty=False,
                user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                working_dir="/workspace",
                environment=SANDBOX_ENV,
                hostname="sandbox",
                labels=labels,
                host_config=host_config,
            )
            cid = str(created["Id"])
            self.tracked.add(cid)
            api.start(cid)
        except docker.errors.ImageNotFound as err:
            raise _image_missing(cfg.image) from err
        except docker.errors.DockerException as err:
            raise _engine_error(err) from err
        return cid

    def kill(self, cid: str) -> None:
        try:
            self.client.api.kill(cid)
        except docker.errors.DockerException:
            pass  # already stopped or gone: either way it no longer runs

    def remove(self, cid: str) -> None:
        """Kill and remove; idempotent."""
        try:
            self.client.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            if "already in progress" not in str(err):
                raise _engine_error(err) from err
        self.tracked.discard(cid)

    # -- one run --------------------------------------------------------------------------------

    def execute(self, cid: str, request: dict[str, Any], host_timeout: float) -> RawRun:
        """Send the request to the idle bootstrap in `cid` and read its report.

        The program arrives over the attach stream's stdin and we then half-close it: unlike argv it
        has no size limit and is not visible in `docker inspect`; unlike `docker exec` it needs no extra
        process or round trip, and it works with a read-only root because nothing is copied into the
        image. The report is the first complete line on stdout; we return as soon as it arrives, without
        waiting for the container to stop.
        """
        payload = json.dumps(request).encode()
        try:
            sock_io = self.client.api.attach_socket(
                cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
        except docker.errors.DockerException as err:
            raise _engine_error(err) from err
        sock: socket.socket = sock_io._sock
        deadline = time.monotonic() + host_timeout
        out = bytearray()
        err_buf = bytearray()
        limit = self.config.max_report_bytes()
        try:
            sock.settimeout(max(1.0, host_timeout))
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while True:
                header = _recv_exact(sock, 8, deadline)
                if header is None:
                    break
                stream, size = struct.unpack(">BxxxL", header)
                data = _recv_exact(sock, size, deadline)
                if data is None:
                    break
                if stream == 1:
                    out += data
                    if b"\n" in data:
                        line = bytes(out).split(b"\n", 1)[0]
                        if len(line) > limit:
                            raise _report_too_large(limit)
                        return RawRun(report=parse_report(line, self.config), stderr=bytes(err_buf))
                    if len(out) > limit:
                        raise _report_too_large(limit)
                elif len(err_buf) < _STDERR_KEEP:
                    err_buf += data[: _STDERR_KEEP - len(err_buf)]
        except TimeoutError:
            self.kill(cid)
            return RawRun(report=None, stderr=bytes(err_buf), host_timed_out=True)
        except OSError as err:
            raise ApplicationError(f"sandbox stream broke: {err}", type=errors.SANDBOX_INTERNAL) from err
        finally:
            sock.close()
            sock_io.close()
        # The stream ended without a report: the bootstrap itself died (e.g. the OOM killer chose it).
        exit_code, oom = self._final_state(cid)
        return RawRun(report=None, stderr=bytes(err_buf), exit_code=exit_code, oom_killed=oom)

    def _final_state(self, cid: str) -> tuple[int | None, bool]:
        try:
            status = self.client.api.wait(cid, timeout=10)
            state = self.client.api.inspect_container(cid)["State"]
            return int(status.get("StatusCode", -1)), bool(state.get("OOMKilled"))
        except Exception:
            return None, False

    # -- reaping --------------------------------------------------------------------------------

    def reap(self) -> list[str]:
        """Remove sandbox containers whose activity is gone; returns the ids removed.

        Gone means: created by an engine object of this process that is closed or does not track it;
        created by a process on this host that has exited; or, for another host's containers we cannot
        check, older than `orphan_after_seconds` or past their deadline.
        """
        now = time.time()
        try:
            listed = self.client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
        except docker.errors.DockerException as err:
            raise _engine_error(err) from err
        reaped = []
        for c in listed:
            labels = c.get("Labels") or {}
            owner = labels.get(LABEL_OWNER, "")
            if owner == self.owner:
                engine = _LIVE_INSTANCES.get(labels.get(LABEL_INSTANCE, ""))
                keep = engine is not None and c["Id"] in engine.tracked
            else:
                alive = _owner_alive(owner)
                if alive is None:
                    deadline = float(labels.get(LABEL_DEADLINE) or "inf")
                    keep = now - c.get("Created", now) < self.config.orphan_after_seconds and now < deadline
                else:
                    keep = alive
            if not keep:
                self.remove(c["Id"])
                reaped.append(c["Id"])
        return reaped

    def list_sandboxes(self) -> list[dict[str, Any]]:
        return list(self.client.api.containers(all=True, filters={"label": f"{LABEL}=1"}))


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _engine_error(err: Exception) -> ApplicationError:
    return ApplicationError(f"Docker engine error: {err}", type=errors.SANDBOX_ENGINE_UNAVAILABLE)


def _image_missing(image: str) -> ApplicationError:
    """Non-retryable: a retry finds the image just as missing until someone builds it."""
    return ApplicationError(
        f"sandbox image {image} is missing; run `cairn sandbox build`",
        type=errors.SANDBOX_IMAGE_MISSING,
        non_retryable=True,
    )

"""Runs one ExecRequest in a sandbox and turns what came back into an ExecResult: the async core shared
by the `sandbox.exec` activity, `cairn sandbox exec`, the benchmark and the tests.

Why this exists: the activity and the CLI must run programs through exactly the same code path, and
the activity adds only Temporal concerns (heartbeats, artifact location) around it.

Blocking Docker calls run on two thread pools owned here rather than `asyncio.to_thread`'s shared one:
a run's stream read blocks a thread for as long as the program runs, and if those reads filled the shared
pool, the kill that ends a cancelled run would wait behind them. Control calls (create, kill, remove)
therefore never queue behind stream reads.

Must never: report a failing program as an activity failure (that is a result with exit_code != 0), turn
an infrastructure failure into a result, leave a container behind when a run is cancelled, store an
artifact outside the directory it was given or under a name the program chose unsanitised, or let the
model see an unbounded list of what the program left behind.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import mimetypes
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.sandbox.artifacts import shown_name
from activities.sandbox.config import MIB, SandboxConfig
from activities.sandbox.engine import (
    LABEL_DEADLINE,
    REPORT_NAME_CHARS,
    RawRun,
    ReportArtifact,
    ReportStream,
    SandboxEngine,
)
from activities.sandbox.pool import WarmPool
from common import errors
from common.sandbox_models import (
    MAX_INPUT_BYTES,
    MAX_SKIPPED_LISTED,
    Artifact,
    ExecRequest,
    ExecResult,
    SkippedArtifact,
    explain,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PREVIEW_CHARS = 2000
_TEXT_TYPES = ("text/", "application/json", "application/csv")


class SandboxRunner:
    def __init__(self, config: SandboxConfig | None = None, *, pool_size: int | None = None) -> None:
        self.config = config or SandboxConfig.from_env()
        self.engine = SandboxEngine(self.config)
        self._control = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sandbox-ctl")
        self._streams = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sandbox-io")
        size = self.config.pool_size if pool_size is None else pool_size
        self.pool = WarmPool(self.engine, size, self.config.pool_max_idle_seconds, self._ctl)
        self._background: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._started = False

    # -- thread helpers -----------------------------------------------------------------------

    async def _ctl(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._control, functools.partial(fn, *args))

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._streams, functools.partial(fn, *args))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the image, reap orphans, fill the pool and start periodic reaping. Raises the same
        ApplicationError a run would if the engine is down or the image missing."""
        await self._ctl(self.engine.check_image)
        self._started = True  # only now: until the image is there, every run checks again
        reaped = await self._ctl(self.engine.reap)
        if reaped:
            log.info("reaped %d orphaned sandbox containers", len(reaped))
        self.pool.kick()
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_interval_seconds)
            try:
                await self._ctl(self.engine.reap)
                await self.pool.recycle_stale()
            except Exception as err:
                log.warning("sandbox maintenance failed: %s", err)

    async def settle(self) -> None:
        """Wait until background removals and pool refills have finished (tests assert no container is
        left that is neither removed nor idle in the pool)."""
        while self._background:
            await asyncio.wait(set(self._background))
        await self.pool.quiesce()

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
        await self.pool.close()
        await self.settle()
        self.engine.close()
        self._control.shutdown(wait=False)
        self._streams.shutdown(wait=False)

    # -- one run ------------------------------------------------------------------------------

    async def run(
        self,
        req: ExecRequest,
        *,
        artifacts_dir: Path,
        labels: dict[str, str] | None = None,
        on_tick: Callable[[], None] | None = None,
        use_pool: bool = True,
    ) -> ExecResult:
        if req.input_bytes() > MAX_INPUT_BYTES:
            raise ApplicationError(
                f"program and input files exceed {MAX_INPUT_BYTES} bytes",
                type=errors.SANDBOX_INVALID_REQUEST,
                non_retryable=True,
            )
        if not self._started:
            await self.start()
        timeout = self.config.clamp_timeout(req.timeout_seconds)
        host_timeout = timeout + self.config.host_grace_seconds
        request = {
            "code": req.code,
            "files": req.files,
            "timeout_seconds": timeout,
            "limits": {
                "output_cap_bytes": self.config.output_cap_bytes,
                "max_artifacts": self.config.max_artifacts,
                "max_artifact_bytes": self.config.max_artifact_bytes,
                "max_artifacts_total_bytes": self.config.max_artifacts_total_bytes,
                "max_skipped_listed": MAX_SKIPPED_LISTED,
                "max_name_chars": REPORT_NAME_CHARS,
            },
        }
        cid = await self.pool.take() if use_pool else None
        warm = cid is not None
        try:
            raw, cid = await self._run_in(cid, request, host_timeout, labels or {}, on_tick)
        except ApplicationError as err:
            if not warm or err.type != errors.SANDBOX_ENGINE_UNAVAILABLE:
                raise
            # A pooled container can die while idle (engine restart); one cold retry covers that.
            # activity.logger: inside the activity it names the workflow, run and activity; outside
            # (the CLI, the benchmark) it logs plainly.
            activity.logger.warning("warm sandbox failed (%s); retrying in a fresh container", err)
            warm = False
            raw, cid = await self._run_in(None, request, host_timeout, labels or {}, on_tick)
        try:
            result = await self._ctl(self._to_result, raw, timeout, artifacts_dir)
        finally:
            # Removing the used container and refilling the pool cost CPU; on a small machine doing
            # them while the program runs slows the run, so they start once its result is in hand.
            self._spawn(self._ctl(self.engine.remove, cid))
            if use_pool:
                self.pool.kick()
        result.warm = warm
        return result

    async def _run_in(
        self,
        cid: str | None,
        request: dict[str, Any],
        host_timeout: float,
        labels: dict[str, str],
        on_tick: Callable[[], None] | None,
    ) -> tuple[RawRun, str]:
        """Run in `cid` (or a fresh container); the caller removes the container after a normal end."""
        if cid is None:
            deadline = time.time() + host_timeout + 60
            cid = await self._ctl(self.engine.create_started, {**labels, LABEL_DEADLINE: f"{deadline:.0f}"})
        reading = asyncio.ensure_future(self._io(self.engine.execute, cid, request, host_timeout))
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=self.config.heartbeat_seconds)
                if done:
                    return reading.result(), cid
                if on_tick is not None:
                    on_tick()
        except BaseException:
            # Cancelled (or the read failed): the container must die now, not at its deadline. Killing
            # it also ends the blocked read, since the stream closes.
            await asyncio.shield(self._ctl(self.engine.remove, cid))
            raise

    # -- result ------------------------------------------------------------------------------

    def _to_result(self, raw: RawRun, timeout: float, artifacts_dir: Path) -> ExecResult:
        cfg = self.config
        result = ExecResult(timeout_seconds=timeout, memory_limit_mib=cfg.memory_mib, pids_limit=cfg.pids)
        rep = raw.report
        if rep is None:
            # The supervisor died or stopped answering, so there is no output to show; say why.
            result.timed_out = raw.host_timed_out
            result.exit_code = raw.exit_code if raw.exit_code is not None else 137
            result.oom_killed = raw.oom_killed
            result.stderr = raw.stderr.decode("utf-8", "replace")[-2000:]
            if result.timed_out or result.oom_killed:
                result.error = explain(result) + " (no output could be collected)"
            else:
                result.error = f"the sandbox supervisor died without a report (exit code {result.exit_code})"
            return result
        code = rep.exit_code
        if code < 0:
            # Killed by a signal: report it the way a shell would (128 + signal number).
            result.signal = _signal_name(-code)
            code = 128 - code
        result.exit_code = code
        result.timed_out = rep.timed_out
        result.duration_ms = rep.duration_ms
        result.stdout, result.stdout_truncated, result.stdout_bytes = _decode_stream(rep.stdout, "stdout")
        result.stderr, result.stderr_truncated, result.stderr_bytes = _decode_stream(rep.stderr, "stderr")
        result.oom_killed = (rep.oom_kills or 0) > 0
        if rep.pids_max_events is None:
            # The cgroup counter was unreadable; fall back to the symptom Python prints.
            result.pids_limit_hit = "Resource temporarily unavailable" in result.stderr
        else:
            result.pids_limit_hit = rep.pids_max_events > 0
        result.artifacts, refused = store_artifacts(rep.artifacts, artifacts_dir)
        skipped = refused + [
            SkippedArtifact(name=shown_name(s.name), size=s.size, reason=s.reason)
            for s in rep.artifacts_skipped
        ]
        result.artifacts_skipped = skipped[:MAX_SKIPPED_LISTED]
        result.artifacts_skipped_unlisted = rep.artifacts_skipped_unlisted + len(skipped[MAX_SKIPPED_LISTED:])
        result.error = explain(result)
        return result


def _free(directory: Path, target: Path, taken: set[Path]) -> bool:
    """`target` may be written: not already written by this run, no link or directory in its place, and
    every parent below `directory` a real directory or absent."""
    if target in taken:
        return False
    for parent in list(target.relative_to(directory).parents)[:-1]:  # the last is "." itself
        path = directory / parent
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            return False
    return not target.is_symlink() and not target.is_dir()


def _place(directory: Path, name: str, original: str, taken: set[Path]) -> Path:
    """Where an artifact is stored: its shown name if free, else a flat name unique to the original."""
    target = directory / name
    if _free(directory, target, taken):
        return target
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    leaf = PurePosixPath(name).name
    for n in itertools.count():
        target = directory / (f"{digest}-{n}-{leaf}" if n else f"{digest}-{leaf}")
        if _free(directory, target, taken):
            return target
    raise AssertionError("unreachable")


def store_artifacts(
    items: list[ReportArtifact], directory: Path
) -> tuple[list[Artifact], list[SkippedArtifact]]:
    """Write the report's artifacts under `directory`; returns them and the ones refused.

    Names come from inside the sandbox: they are sanitised and bounded (shown_name), refused if they
    would climb out of the directory, and moved to a distinct flat name when they collide with a file
    or directory already written, so every artifact is stored once and always inside `directory`.
    """
    stored: list[Artifact] = []
    refused: list[SkippedArtifact] = []
    taken: set[Path] = set()
    for item in items:
        rel = PurePosixPath(item.name)
        name = shown_name(item.name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            refused.append(SkippedArtifact(name=name, size=item.size, reason="name outside out/"))
            continue
        target = _place(directory, name, item.name, taken)
        taken.add(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.data)
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        preview = None
        if media_type.startswith(_TEXT_TYPES) and len(item.data) <= 64 * 1024:
            preview = item.data[: PREVIEW_CHARS * 4].decode("utf-8", "replace")[:PREVIEW_CHARS]
        stored.append(
            Artifact(
                name=name,
                size=len(item.data),
                media_type=media_type,
                path=str(target.resolve()),
                sha256=hashlib.sha256(item.data).hexdigest(),
                preview=preview,
            )
        )
    return stored, refused


def _decode_stream(part: ReportStream, label: str) -> tuple[str, bool, int]:
    head, tail, total = part.head, part.tail, part.total
    if total <= len(head) + len(tail):
        return (head + tail).decode("utf-8", "replace"), False, total
    omitted = total - len(head) - len(tail)
    marker = f"\n...[cairn: {omitted} bytes of {label} omitted; {total} bytes in total]...\n"
    text = head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace")
    return text, True, total


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


__all__ = ["MIB", "SandboxRunner"]

"""Stopping the processes testkit starts (dev servers, PostgreSQL, workers, the scripted LLM).

Why this exists: every server a test starts must be gone when the test ends, however it ends, so each
is asked to stop, given time to, and killed when it does not. That rule lives here once.

Must never: signal a process it was not handed (a process group is signalled by the pid of the
process that leads it, never by name).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def _signal(process: subprocess.Popen[bytes], signum: int, group: bool) -> None:
    if group:
        # A group outlives its leader's exit; one that is gone altogether has nothing left to stop.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)  # a no-op once the process has been waited for


def kill(process: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGKILL `process` (with `group`, its whole process group) and wait for it."""
    _signal(process, signal.SIGKILL, group)
    process.wait()


def wait_or_kill(process: subprocess.Popen[bytes], seconds: float, *, group: bool = False) -> int | None:
    """Wait up to `seconds` for `process`, already asked to stop, to exit; then kill it. Returns its exit
    code, or None when it had to be killed."""
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        kill(process, group=group)
        return None


def stop(process: subprocess.Popen[bytes], seconds: float, *, group: bool = False) -> int | None:
    """SIGTERM `process` (with `group`, its whole process group), wait up to `seconds`, then kill it.
    Returns its exit code, or None when it had to be killed."""
    _signal(process, signal.SIGTERM, group)
    return wait_or_kill(process, seconds, group=group)

"""Input and output of the `sandbox.exec` activity (its error types are in common/errors.py).

These objects are serialised into workflow history, so they evolve only by adding fields with defaults:
an old history must replay and an old worker must still understand a newer request. For that reason
unknown fields are ignored here rather than rejected. Artifacts travel by reference (a path under the
worker's artifacts directory), never inline: history must not carry image bytes.

Must never: hold a docker client, a path to the Docker socket, or anything read from the worker's
environment.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import BaseModel, Field, field_validator

from common.tenancy import DEFAULT_TENANT

MAX_INPUT_FILES = 32
MAX_INPUT_BYTES = 1024 * 1024  # code plus all input files, as UTF-8
MAX_SKIPPED_LISTED = 20  # skipped artifacts named in a result; the rest are only counted
SUMMARY_CHARS = 3000  # ExecResult.summary() never returns more


class ExecRequest(BaseModel):
    """Run one Python program in a fresh sandbox container.

    `files` are small text inputs written under /workspace before the program starts (relative paths).
    The program writes anything it wants returned into /workspace/out.
    """

    code: str
    files: dict[str, str] = Field(default_factory=dict)
    # None means the worker's configured default; the worker clamps it to its configured maximum.
    timeout_seconds: float | None = None
    # A short label for the step (used in the artifacts path and in logs), e.g. "step-3".
    step: str = ""
    # Whose run this is (common/tenancy.py): the artifacts go to that tenant's directory.
    tenant: str = DEFAULT_TENANT
    # The research run the step belongs to: its artifacts directory is that run's, one sub-directory
    # per step (activities/sandbox/artifacts.py). "" (a request from before this field) means the
    # calling workflow's own id.
    run_id: str = ""

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, str]) -> dict[str, str]:
        if len(files) > MAX_INPUT_FILES:
            raise ValueError(f"at most {MAX_INPUT_FILES} input files")
        for name in files:
            p = PurePosixPath(name)
            if not name or p.is_absolute() or ".." in p.parts or p.parts[:1] == ("out",):
                raise ValueError(f"input file path {name!r} must be relative, without '..', not in out/")
        return files

    def input_bytes(self) -> int:
        return len(self.code.encode()) + sum(len(k.encode()) + len(v.encode()) for k, v in self.files.items())


class Artifact(BaseModel):
    """A file the program left in /workspace/out, stored on the worker; `path` is the reference."""

    name: str  # relative to /workspace/out, e.g. "plot.png" or "tables/summary.csv"
    size: int
    media_type: str = "application/octet-stream"
    path: str = ""  # absolute path of the stored copy on the worker's artifacts directory
    sha256: str = ""
    # The first few KiB of small text artifacts (CSV, JSON, TXT) so the model can read them directly.
    preview: str | None = None


class SkippedArtifact(BaseModel):
    name: str
    size: int
    reason: str


class ExecResult(BaseModel):
    """What happened. A failing program is a normal result (exit_code != 0), not an activity failure."""

    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_bytes: int = 0  # total produced, including what was cut
    stderr_bytes: int = 0
    timed_out: bool = False
    oom_killed: bool = False
    pids_limit_hit: bool = False
    signal: str | None = None  # e.g. "SIGKILL" when the program died of a signal
    duration_ms: int = 0  # program wall-clock time inside the sandbox
    artifacts: list[Artifact] = Field(default_factory=list)
    artifacts_skipped: list[SkippedArtifact] = Field(default_factory=list)  # at most MAX_SKIPPED_LISTED
    artifacts_skipped_unlisted: int = 0  # skipped beyond those listed
    # Human- and model-readable explanation when something went wrong; "" on a clean exit 0.
    error: str = ""
    # Limits in force for this run, so `error` and the model can refer to them.
    timeout_seconds: float = 0.0
    memory_limit_mib: int = 0
    pids_limit: int = 0
    warm: bool = False  # served by a pre-started pool container

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed

    def summary(self) -> str:
        """One short paragraph for a model or a person: outcome, limits hit, artifacts; at most
        SUMMARY_CHARS, however many files the program left."""
        parts = [f"exit code {self.exit_code} after {self.duration_ms} ms"]
        if self.error:
            parts.append(self.error)
        if self.stdout_truncated or self.stderr_truncated:
            parts.append(
                f"output truncated (stdout {self.stdout_bytes} bytes, stderr {self.stderr_bytes} bytes produced)"
            )
        budget = SUMMARY_CHARS // 3
        if self.artifacts:
            names = [f"{a.name} ({a.size} bytes)" for a in self.artifacts]
            parts.append("artifacts: " + _listing(names, 0, budget))
        if self.artifacts_skipped or self.artifacts_skipped_unlisted:
            names = [f"{a.name} ({a.reason})" for a in self.artifacts_skipped]
            parts.append("artifacts not kept: " + _listing(names, self.artifacts_skipped_unlisted, budget))
        return clip("; ".join(parts), SUMMARY_CHARS)


def _listing(items: list[str], more: int, budget: int) -> str:
    """Items joined by commas while they fit in `budget` characters, then how many were left out."""
    shown: list[str] = []
    used = 0
    for item in items:
        if used + len(item) > budget:
            break
        shown.append(item)
        used += len(item) + 2
    left = len(items) - len(shown) + more
    return ", ".join(shown + ([f"{left} more"] if left else []))


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    note = " [cairn: {} more characters left out]"
    keep = limit - len(note.format(len(text)))
    return text[:keep] + note.format(len(text) - keep)


def explain(result: ExecResult) -> str:
    """The `error` text for a result: why the program did not finish cleanly, citing the limit."""
    reasons = []
    if result.timed_out:
        reasons.append(f"killed after {result.timeout_seconds:g}s wall-clock timeout")
    if result.oom_killed:
        reasons.append(f"out of memory (limit {result.memory_limit_mib} MiB); a process was killed")
    if result.pids_limit_hit:
        reasons.append(f"process limit reached ({result.pids_limit} processes/threads); fork failed")
    if not reasons and result.signal:
        reasons.append(f"terminated by {result.signal}")
    if not reasons and result.exit_code != 0:
        reasons.append(f"program exited with code {result.exit_code}")
    return "; ".join(reasons)

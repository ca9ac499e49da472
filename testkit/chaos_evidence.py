"""The evidence a chaos scenario leaves: what was broken and when, and what the runs did meanwhile.

Why this exists: testkit/chaos.py gathers the evidence and testkit/chaos_checks.py judges it; the types
in between live here, so neither of the two needs the other. Everything is plain data, saved as JSON
beside the worker's log and the server's database.

Must never: hold a live object (a client, a process, a connection): an Outcome outlives its scenario.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from common.models import ResearchResult
from testkit.chaos_faults import Served
from testkit.chaos_history import Trace, Waiting


@dataclass
class Restart:
    """One kill of the worker or the server, and the start of its successor."""

    kind: str  # "worker" or "server"
    killed_at: float
    spawned_at: float  # the new process started
    ready_at: float  # the new worker polls / the restarted server answers
    pid: int = 0  # the new worker's pid
    identity_prefix: str = ""
    exited_by_itself: int | None = None  # the killed worker had already exited, with this code
    # What each open run (and its open children) had pending when the new worker began to poll: a run
    # whose only pending work was waiting out retry backoff is due when that ends (chaos_checks.due_at).
    waiting: dict[str, list[Waiting]] = field(default_factory=dict)
    # Runs that had not moved a few seconds after the new worker polled, looked at again every second
    # until they moved: the evidence for a run that stood still.
    stalls: list[Waiting] = field(default_factory=list)


@dataclass
class Outcome:
    """Everything a scenario leaves to check, in plain data."""

    label: str
    results: dict[str, ResearchResult | None]
    statuses: dict[str, str]
    errors: dict[str, str]
    served: list[Served]
    traces: dict[str, Trace]
    restarts: list[Restart]
    started_at: float
    ended_at: float
    containers_left: list[str]
    worker_pids: list[int]
    worker_exit_code: int | None
    worker_log: Path
    questions: dict[str, str] = field(default_factory=dict)  # workflow id -> research question

    @property
    def wall_seconds(self) -> float:
        return self.ended_at - self.started_at

    @property
    def reports(self) -> dict[str, str | None]:
        return {wid: (r.report if r else None) for wid, r in self.results.items()}

    def save(self, path: Path) -> None:
        """Everything but the results' pydantic objects (their reports are kept), as JSON."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "results"}
        data["reports"] = self.reports
        path.write_text(json.dumps(data, indent=1, default=str))

"""Chaos for Cairn: runs at once while workers die, the Temporal server dies and the LLM misbehaves.

Why this exists: "a run survives crashes without losing or repeating completed work" is Cairn's main
promise, and only a test that breaks things at random proves it. `run_scenario` starts research runs
on a dev server and a worker process of their own, against the scripted LLM; in chaos mode it
SIGKILLs the worker at seeded random moments and starts a new one, kills the dev server once and
restarts it on the same database file, and fails a share of LLM requests (429 with Retry-After, 500, a
timeout, malformed JSON). `Outcome` then holds what the checks need, read from the server's request
log and from the runs' histories: the reports, LLM requests answered against LLM activities
completed, progress after each restart, and sandbox containers left behind. tests/test_chaos.py runs
a short scenario, bench/chaos.py a long one; each compares against a clean run of the same questions.

Must never: kill a process it did not start (workers and the server are killed by their own pid or
process group), let a fault change a request's eventual answer (faults are chosen per request, the
answer depends on the request alone), or count a repeat as harmless unless a kill fell inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType, TaskQueueType, TimeoutType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from client.api import CairnClient
from client.connection import connect, data_converter
from common.config import TemporalConfig
from common.models import ResearchResult
from common.names import LLM_CHAT, NODE_FINDING, NODE_MODEL, RESEARCHER_GRAPH
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite
from testkit.scripted_llm import Fault, ScriptedLLM

REPO = Path(__file__).resolve().parent.parent
LLM_ACTIVITIES = frozenset(
    {LLM_CHAT, f"{RESEARCHER_GRAPH}.{NODE_MODEL}", f"{RESEARCHER_GRAPH}.{NODE_FINDING}"}
)
API_KEY = "sk-cairn-chaos"
PROGRESS_BOUND_SECONDS = 5.0  # the bound: runs move again this soon after a worker restart

# -- faults -------------------------------------------------------------------------------------------

FAULT_KINDS = ("429", "500", "timeout", "malformed")
# Roles whose answer is JSON that Cairn validates and re-asks on: a malformed answer costs a re-ask and
# leaves the report as it was. Anywhere else (a researcher's tool-calling turn, the reporter, the coder)
# a malformed answer is a different answer, and would rightly change the report.
JSON_ROLES = frozenset({"planner", "reviewer", "finding"})
REASK_MARKERS = ("That reply was not valid", "Your previous answer was not valid")
# What differs between sessions in a request that is otherwise the same: loopback ports (the research
# site's URLs) and how long a sandbox run took (the coder's summary request quotes it).
_VARIES = re.compile(r"(?<=127\.0\.0\.1):\d+| after \d+ ms")
MALFORMED = (
    "Here is the JSON you asked for, more or less.",
    '{"rationale": "cut short", "steps": [{"title": "unterminated',
    '{"rationale": "nothing else", "steps": []}',
)


def request_key(body: dict[str, Any]) -> str:
    """What makes two requests the same call: the messages and the tools offered. A retry of a call
    sends the same request; a re-ask after a malformed answer is a new call. What varies between
    sessions is left out, so a seed picks the same faults from one session to the next."""
    tools = sorted(t.get("function", {}).get("name", "") for t in body.get("tools") or [])
    text = json.dumps({"messages": body.get("messages") or [], "tools": tools}, sort_keys=True)
    return hashlib.sha256(_VARIES.sub("", text).encode()).hexdigest()[:20]


def research_question(body: dict[str, Any]) -> str:
    """The question a request works on: every role's first user message names it on a line of its own."""
    first = next((m for m in body.get("messages") or [] if m.get("role") == "user"), {})
    found = re.search(r"^Research question: (.*)$", str(first.get("content") or ""), flags=re.MULTILINE)
    return found.group(1) if found else ""


def is_reask(body: dict[str, Any]) -> bool:
    texts = [str(m.get("content") or "") for m in body.get("messages") or []]
    return any(marker in text for text in texts for marker in REASK_MARKERS)


def choose_fault(seed: int, rate: float, key: str, arrival: int, role: str, reask: bool) -> str | None:
    """The fault kind for the `arrival`-th arrival of request `key`, or None. Pure: the same
    arguments give the same answer, so a seed's faults can be worked out ahead of a run."""
    rng = random.Random(f"{seed}:{key}:{arrival}")
    if rng.random() >= rate:
        return None
    kinds = [k for k in FAULT_KINDS if k != "malformed" or (role in JSON_ROLES and not reask)]
    return rng.choice(kinds)


@dataclass(frozen=True)
class Served:
    """One request as the scripted server saw it: when (time.time()), which call, what it got."""

    at: float
    role: str
    key: str
    outcome: str  # "ok" or one of FAULT_KINDS
    arrival: int = 0  # how many times the same request had arrived before
    reask: bool = False
    question: str = ""  # the research question the request works on: which run sent it

    @property
    def answered(self) -> bool:
        """The server answered 200: the worker got a reply its activity completes with."""
        return self.outcome in ("ok", "malformed")


class FaultInjector:
    """A `ScriptedLLM.chooser`: fails `rate` of requests, deterministically for a seed.

    The n-th time the same request arrives, the decision comes from a generator seeded with (seed,
    request, n), so a retry is decided afresh, and the same run with the same seed meets the same
    faults. Only the first `max_per_call` arrivals of a request may fail, and a re-ask is never given
    a malformed answer, so no run can fail for want of attempts."""

    def __init__(
        self,
        rate: float = 0.2,
        seed: int = 0,
        *,
        timeout_delay: float = 4.0,
        retry_after: tuple[float, float] = (0.2, 0.5),
        max_per_call: int = 3,
    ) -> None:
        self.rate = rate
        self.seed = seed
        self.timeout_delay = timeout_delay  # longer than the worker's LLM request timeout
        self.retry_after = retry_after
        self.max_per_call = max_per_call
        self.served: list[Served] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, role: str, body: dict[str, Any]) -> Fault | None:
        key = request_key(body)
        with self._lock:
            arrival = self._seen[key]
            self._seen[key] += 1
        reask = is_reask(body)
        kind = None
        if arrival < self.max_per_call:
            kind = choose_fault(self.seed, self.rate, key, arrival, role, reask)
        question = research_question(body)
        with self._lock:
            self.served.append(Served(time.time(), role, key, kind or "ok", arrival, reask, question))
        if kind is None:
            return None
        rng = random.Random(f"{self.seed}:{key}:{arrival}:how")
        if kind == "429":
            return Fault(429, retry_after=round(rng.uniform(*self.retry_after), 2))
        if kind == "500":
            return Fault(500)
        if kind == "timeout":
            return Fault(504, delay=self.timeout_delay)
        return Fault(200, content=rng.choice(MALFORMED))

    def tally(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(s.outcome for s in self.served))


# -- processes ----------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Temporal, LLM, Cairn or tracing settings, plus `extra`."""
    prefixes = ("TEMPORAL_", "OPENAI_", "CAIRN_", "OTEL_", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


class WorkerProcess:
    """`python worker.py` in a process group of its own, its output appended to `log_file`."""

    def __init__(self, env: dict[str, str], log_file: Path) -> None:
        self.env = env
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every worker this object started, in order
        self.spawned_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    @property
    def identity_prefix(self) -> str:
        """Temporal identities of this worker's pollers are `<pid>@<host>` (and `<pid>@<host>/llm`)."""
        return f"{self.pid}@{socket.gethostname()}"

    def start(self) -> None:
        with open(self.log_file, "ab") as log:
            log.write(f"\n==== worker started at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "worker.py")],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed as a whole, and only it
            )
        self.spawned_at = time.time()
        self.pids.append(self.process.pid)

    def exited_by_itself(self) -> int | None:
        """The exit code, if the worker ended without being told to."""
        return None if self.process is None else self.process.poll()

    def kill(self) -> float:
        """SIGKILL the worker's process group; returns when it was killed."""
        assert self.process is not None
        killed_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return killed_at

    def stop(self, seconds: float = 30.0) -> int | None:
        """SIGTERM and wait: the worker finishes its tasks and closes its sandbox pool. Returns the exit
        code, or None when it had to be killed after `seconds`."""
        if self.process is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


async def wait_polling(client: Client, task_queue: str, identity_prefix: str, seconds: float = 60) -> float:
    """When a worker of this identity first polls the queue for workflow tasks (time.time())."""
    deadline = time.monotonic() + seconds
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    while time.monotonic() < deadline:
        with contextlib.suppress(RPCError):
            response = await client.workflow_service.describe_task_queue(request)
            if any(p.identity.startswith(identity_prefix) for p in response.pollers):
                return time.time()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no worker {identity_prefix} polled {task_queue} within {seconds:g} s")


def sandbox_containers(pids: Iterable[int]) -> list[str]:
    """Sandbox containers (running or not) created by any of these worker processes on this host."""
    import docker

    from activities.sandbox_engine import LABEL, LABEL_OWNER

    host = socket.gethostname()
    owners = {str(pid) for pid in pids}
    client = docker.from_env(version="auto")
    try:
        listed = client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
    finally:
        client.close()
    left = []
    for c in listed:
        parts = ((c.get("Labels") or {}).get(LABEL_OWNER) or "").split("|")
        if len(parts) == 3 and parts[0] == host and parts[1] in owners:
            left.append(str(c["Id"])[:12])
    return left


# -- the scenario -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    workflow_id: str
    question: str
    options: dict[str, Any] = field(default_factory=dict)


def standard_runs(count: int, steps: int = 2, prefix: str = "chaos") -> list[RunSpec]:
    """`count` auto-approved runs of `steps` research steps each: every third adds a code step (the
    sandbox) and runs all its steps at once, the others run their steps one at a time (longer runs, so
    kills land inside them), and every third after the first has the reviewer add a step (a replan).
    Question text differs per run, so no two runs send the same LLM request.

    A step sees the findings of the steps that finished before it started. Steps either all start at
    once or run one at a time here, so what each step sees does not depend on timing."""
    runs = []
    for i in range(count):
        code, replan = i % 3 == 0, i % 3 == 1
        markers = f"[steps={steps}]" + (" [code]" if code else "") + (" [replan=1]" if replan else "")
        options: dict[str, Any] = {"auto_approve": True, "max_parallel_steps": steps + 1 if code else 1}
        runs.append(RunSpec(f"{prefix}-{i}", f"Chaos run {i}: how do old roads age? {markers}", options))
    return runs


@dataclass
class Chaos:
    """What to break. With worker_kills=0, server_kill=False and fault_rate=0 it is a clean run."""

    worker_kills: int = 3
    server_kill: bool = True
    fault_rate: float = 0.2
    seed: int = 1
    # A kill comes this long (uniformly at random) after the previous worker began to poll.
    kill_gap: tuple[float, float] = (1.0, 4.0)


@dataclass
class Restart:
    kind: str  # "worker" or "server"
    killed_at: float
    spawned_at: float  # the new process started
    ready_at: float  # the new worker polls / the restarted server answers
    pid: int = 0  # the new worker's pid
    identity_prefix: str = ""
    exited_by_itself: int | None = None  # the killed worker had already exited, with this code


@dataclass
class Settings:
    latency: float = 0.05  # the scripted LLM's per-call latency
    llm_timeout: float = 3.0  # CAIRN_LLM_TIMEOUT of the worker; a "timeout" fault sleeps 1 s longer
    run_timeout: float = 600.0
    sandbox_pool_size: int = 1
    # Extra dev-server arguments, e.g. ["--dynamic-config-value", 'history.defaultWorkflowTaskTimeout="2s"']
    # to try a shorter workflow task timeout than the server's default of 10 s.
    server_args: list[str] = field(default_factory=list)


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


async def run_scenario(
    label: str,
    runs: list[RunSpec],
    workdir: Path,
    home: Path,
    site: ResearchSite,
    chaos: Chaos | None = None,
    settings: Settings | None = None,
) -> Outcome:
    """Start `runs` on a fresh dev server (database under `workdir`) and worker, apply `chaos` while
    they run, wait for all of them, stop the worker gracefully and collect the evidence.

    `home` is the worker's CAIRN_HOME. Artifact paths in reports contain it, so a clean run and a
    chaos run of the same questions must use the same path (one after the other) to compare reports."""
    chaos = chaos or Chaos(worker_kills=0, server_kill=False, fault_rate=0.0)
    settings = settings or Settings()
    for directory in (workdir, home):
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    faults = FaultInjector(chaos.fault_rate, chaos.seed, timeout_delay=settings.llm_timeout + 1.0)
    llm = ScriptedLLM(latency=settings.latency, api_key=API_KEY, chooser=faults).start()
    server = DevServer(
        db_file=workdir / "temporal.db", log_file=workdir / "temporal.log", extra_args=settings.server_args
    )
    await asyncio.to_thread(server.start)
    task_queue = f"{label}-{os.urandom(4).hex()}"
    worker = WorkerProcess(
        clean_env(
            TEMPORAL_ADDRESS=server.address,
            CAIRN_TASK_QUEUE=task_queue,
            OPENAI_BASE_URL=llm.base_url,
            OPENAI_API_KEY=API_KEY,
            CAIRN_HOME=str(home),
            CAIRN_SEARXNG_URL=site.url,
            CAIRN_FETCH_ALLOW_PRIVATE="1",
            CAIRN_LLM_TIMEOUT=f"{settings.llm_timeout:g}",
            CAIRN_SANDBOX_POOL_SIZE=str(settings.sandbox_pool_size),
            PYTHONUNBUFFERED="1",
        ),
        workdir / "worker.log",
    )
    try:
        client = await connect(
            TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}),
            data_converter=data_converter({"CAIRN_HOME": str(home)}),
        )
        cairn = CairnClient(client, task_queue)
        started_at = time.time()
        worker.start()
        for spec in runs:
            await cairn.start(spec.question, workflow_id=spec.workflow_id, **spec.options)
        await wait_polling(client, task_queue, worker.identity_prefix)
        closed = asyncio.Event()
        ids = [r.workflow_id for r in runs]
        breaking = asyncio.create_task(_inflict(chaos, client, task_queue, server, worker, ids, closed))
        try:
            statuses = await _wait_closed(client, ids, settings.run_timeout)
        finally:
            closed.set()
            restarts = await breaking
        ended_at = time.time()
        results, errors = await _results(cairn, statuses)
        traces = {r.workflow_id: await trace_run(client, r.workflow_id) for r in runs}
    finally:
        exit_code = await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(server.stop)
        llm.stop()
    left = await asyncio.to_thread(sandbox_containers, worker.pids)
    outcome = Outcome(
        label=label,
        results=results,
        statuses={wid: s.name for wid, s in statuses.items()},
        errors=errors,
        served=list(faults.served),
        traces=traces,
        restarts=restarts,
        started_at=started_at,
        ended_at=ended_at,
        containers_left=left,
        worker_pids=list(worker.pids),
        worker_exit_code=exit_code,
        worker_log=worker.log_file,
        questions={r.workflow_id: r.question for r in runs},
    )
    # Beside the worker's log and the server's database, so a failure can be taken apart afterwards.
    await asyncio.to_thread(outcome.save, workdir / "evidence.json")
    return outcome


async def _inflict(
    chaos: Chaos,
    client: Client,
    task_queue: str,
    server: DevServer,
    worker: WorkerProcess,
    workflow_ids: list[str],
    closed: asyncio.Event,
) -> list[Restart]:
    """Kill and restart the worker `worker_kills` times, and the server once halfway, at seeded random
    moments, until every run has closed. A moment is `kill_gap` after every open run has moved again
    under the new worker (or the server came back), so each restart's recovery is seen in full before
    the next kill, and kills land in the middle of runs rather than on a worker still starting."""
    rng = random.Random(chaos.seed)
    actions = ["worker"] * chaos.worker_kills
    if chaos.server_kill:
        actions.insert((len(actions) + 1) // 2, "server")  # halfway through the worker kills
    restarts: list[Restart] = []
    for action in actions:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closed.wait(), rng.uniform(*chaos.kill_gap))
        if closed.is_set():
            break
        if action == "server":
            killed_at = time.time()
            await asyncio.to_thread(server.stop, True)
            spawned_at = time.time()
            await asyncio.to_thread(server.start)
            restarts.append(Restart("server", killed_at, spawned_at, time.time()))
            continue
        gone = worker.exited_by_itself()
        killed_at = worker.kill()
        worker.start()
        ready_at = await wait_polling(client, task_queue, worker.identity_prefix)
        restarts.append(
            Restart(
                "worker", killed_at, worker.spawned_at, ready_at, worker.pid, worker.identity_prefix, gone
            )
        )
        await _until_moved(client, workflow_ids, worker.identity_prefix, closed)
    return restarts


async def _until_moved(
    client: Client, workflow_ids: list[str], identity_prefix: str, closed: asyncio.Event, seconds: float = 60
) -> None:
    """Wait until every open run has an event written by the worker `identity_prefix` (or has closed).
    Gives up after `seconds`: the analysis reports a run that stood still, the chaos goes on."""
    deadline = time.monotonic() + seconds
    waiting = list(workflow_ids)
    while waiting and time.monotonic() < deadline and not closed.is_set():
        still = []
        for wid in waiting:
            try:
                trace = await trace_run(client, wid)
            except RPCError:
                still.append(wid)
                continue
            moved = any(p.identity.startswith(identity_prefix) for p in trace.progress)
            if trace.closed_at is None and not moved:
                still.append(wid)
        waiting = still
        if waiting:
            await asyncio.sleep(0.2)


async def _wait_closed(
    client: Client, workflow_ids: list[str], seconds: float
) -> dict[str, WorkflowExecutionStatus]:
    """Poll until every run has closed. Survives the server being down (calls fail, then work again)."""
    deadline = time.monotonic() + seconds
    statuses: dict[str, WorkflowExecutionStatus] = {}
    while time.monotonic() < deadline:
        for wid in workflow_ids:
            if wid in statuses:
                continue
            try:
                status = (await client.get_workflow_handle(wid).describe()).status
            except RPCError:
                continue
            if status not in (
                None,
                WorkflowExecutionStatus.RUNNING,
                WorkflowExecutionStatus.CONTINUED_AS_NEW,
            ):
                statuses[wid] = status
        if len(statuses) == len(workflow_ids):
            return statuses
        await asyncio.sleep(0.25)
    missing = [w for w in workflow_ids if w not in statuses]
    raise TimeoutError(f"runs still open after {seconds:g} s: {missing}")


async def _results(
    cairn: CairnClient, statuses: dict[str, WorkflowExecutionStatus]
) -> tuple[dict[str, ResearchResult | None], dict[str, str]]:
    results: dict[str, ResearchResult | None] = {}
    errors: dict[str, str] = {}
    for wid in statuses:
        try:
            results[wid] = await cairn.result(wid)
        except Exception as err:  # A failed run is evidence to report, not a crash of the harness.
            results[wid] = None
            errors[wid] = f"{type(err).__name__}: {err}"
    return results, errors


# -- histories ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    at: float
    identity: str
    workflow_id: str
    what: str  # "workflow task" or the activity type


@dataclass
class Trace:
    """One run and its child workflows (every run of each, across continue-as-new), from history."""

    workflow_id: str
    workflows: list[str] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)
    # (scheduled, closed) of every LLM activity that completed: the calls the run paid for once.
    llm_completed: list[tuple[float, float]] = field(default_factory=list)
    # How many activities ended on each attempt number (plain dict: dataclasses.asdict mangles Counters).
    attempts: dict[int, int] = field(default_factory=dict)
    # (when, "schedule_to_start" or "start_to_close", workflow id) of every workflow task that timed out
    workflow_task_timeouts: list[tuple[float, str, str]] = field(default_factory=list)
    closed_at: float | None = None


def _seconds(event: HistoryEvent) -> float:
    return event.event_time.seconds + event.event_time.nanos / 1e9


async def trace_run(client: Client, workflow_id: str) -> Trace:
    trace = Trace(workflow_id)
    pending = [workflow_id]
    while pending:
        wid = pending.pop(0)
        trace.workflows.append(wid)
        run_id: str | None = None
        while True:  # the latest run first, then back along continue-as-new
            history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
            pending += _read_history(trace, wid, history.events)
            first = history.events[0].workflow_execution_started_event_attributes
            if not first.continued_execution_run_id:
                break
            run_id = first.continued_execution_run_id
    return trace


def _read_history(trace: Trace, wid: str, events: Sequence[HistoryEvent]) -> list[str]:
    scheduled: dict[int, tuple[str, float]] = {}
    children = []
    for e in events:
        t = e.event_type
        if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = e.activity_task_scheduled_event_attributes
            scheduled[e.event_id] = (attrs.activity_type.name, _seconds(e))
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attempt = e.activity_task_started_event_attributes.attempt
            trace.attempts[attempt] = trace.attempts.get(attempt, 0) + 1
        elif t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = e.activity_task_completed_event_attributes
            kind, at = scheduled[done.scheduled_event_id]
            trace.progress.append(Progress(_seconds(e), done.identity, wid, kind))
            if kind in LLM_ACTIVITIES:
                trace.llm_completed.append((at, _seconds(e)))
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            identity = e.workflow_task_completed_event_attributes.identity
            trace.progress.append(Progress(_seconds(e), identity, wid, "workflow task"))
        elif t == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            timeout = e.workflow_task_timed_out_event_attributes.timeout_type
            sticky = timeout == TimeoutType.TIMEOUT_TYPE_SCHEDULE_TO_START
            kind = "schedule_to_start" if sticky else "start_to_close"
            trace.workflow_task_timeouts.append((_seconds(e), kind, wid))
        elif t == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            children.append(
                e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
            )
        elif t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED and wid == trace.workflow_id:
            trace.closed_at = max(trace.closed_at or 0.0, _seconds(e))
    return children


# -- analysis -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repeat:
    key: str
    role: str
    first_at: float
    again_at: float
    kill_between: bool


# A request the worker sent just before it was killed may be read by the server just after.
KILL_GRACE_SECONDS = 0.5
# A reply counts as in flight at a kill when it came at most this long before: the worker reports an
# answered call's completion within milliseconds, or within a second or two on a starved machine.
IN_FLIGHT_SECONDS = 5.0


def repeats(outcome: Outcome) -> list[Repeat]:
    """Every LLM call the server answered 200 more than once. A repeat is explained only when a kill
    fell between the two answers with the first reply in flight at it: a worker kill shortly after the
    first request arrived, or a server outage (kill to restart) that the first answer shortly preceded
    or fell into (the worker could not report the completion)."""
    outages = [(r.killed_at, r.killed_at if r.kind == "worker" else r.ready_at) for r in outcome.restarts]
    answered: dict[str, list[Served]] = defaultdict(list)
    for s in outcome.served:
        if s.answered:
            answered[s.key].append(s)
    found = []
    for key, times in answered.items():
        for first, again in itertools.pairwise(times):
            explained = any(
                start - IN_FLIGHT_SECONDS < first.at < end + KILL_GRACE_SECONDS and start < again.at
                for start, end in outages
            )
            found.append(Repeat(key, first.role, first.at, again.at, explained))
    return found


def in_flight_at_kills(outcome: Outcome) -> int:
    """LLM calls scheduled but not yet completed at the moment of some kill, summed over kills: an
    upper bound on the replies a kill can lose."""
    calls = [c for t in outcome.traces.values() for c in t.llm_completed]
    return sum(1 for r in outcome.restarts for scheduled, done in calls if scheduled <= r.killed_at <= done)


@dataclass(frozen=True)
class Recovery:
    """How soon runs moved after a worker restart (seconds from the new worker's first poll, and from
    its process start), measured on events the new worker wrote into history."""

    restart: int
    startup: float  # process start to first poll: imports, connecting, the sandbox pool
    first_any: float | None  # first progress in any run
    slowest_run: float | None  # the run that took longest to move
    open_runs: int
    window: float  # until the next kill or the end: longer silence than this cannot be seen
    from_spawn_any: float | None = None
    slowest: str = ""  # which run moved last (or not at all)


def recoveries(outcome: Outcome) -> list[Recovery]:
    """How soon each run that was open at a worker restart moved again: the first workflow task or
    activity the new worker completed for it (its identity is on the event), or the first LLM request
    of the run after the new worker began to poll (the run is being worked on, even when that attempt
    then meets an injected fault). Whatever comes first."""
    found = []
    worker_restarts = [r for r in outcome.restarts if r.kind == "worker"]
    for n, r in enumerate(worker_restarts, 1):
        later = [x.killed_at for x in outcome.restarts if x.killed_at > r.ready_at]
        window_end = min(later) if later else outcome.ended_at
        firsts: dict[str, float | None] = {}
        for trace in outcome.traces.values():
            if trace.closed_at is not None and trace.closed_at <= r.spawned_at:
                continue
            mine = [p.at for p in trace.progress if p.identity.startswith(r.identity_prefix)]
            question = outcome.questions.get(trace.workflow_id)
            mine += [s.at for s in outcome.served if s.question == question and s.at > r.ready_at]
            firsts[trace.workflow_id] = min(mine) if mine else None
        seen = [f for f in firsts.values() if f is not None]
        first_any = min(seen) - r.ready_at if seen else None
        stuck = [wid for wid, f in firsts.items() if f is None]
        slowest = None if (stuck or not seen) else max(seen) - r.ready_at
        last = stuck[0] if stuck else max(firsts, key=lambda w: firsts[w] or 0.0, default="")
        found.append(
            Recovery(
                restart=n,
                startup=r.ready_at - r.spawned_at,
                first_any=first_any,
                slowest_run=slowest,
                open_runs=len(firsts),
                window=window_end - r.ready_at,
                from_spawn_any=(min(seen) - r.spawned_at) if seen else None,
                slowest=last,
            )
        )
    return found


def server_recovery(outcome: Outcome) -> float | None:
    """Seconds from the restarted server answering to the first progress in any run after it."""
    for r in outcome.restarts:
        if r.kind == "server":
            after = [p.at for t in outcome.traces.values() for p in t.progress if p.at > r.ready_at]
            return (min(after) - r.ready_at) if after else None
    return None


def llm_accounting(outcome: Outcome) -> dict[str, int]:
    answered = [s for s in outcome.served if s.answered]
    completed = sum(len(t.llm_completed) for t in outcome.traces.values())
    return {
        "requests": len(outcome.served),
        "answered_200": len(answered),
        "distinct_calls_answered": len({s.key for s in answered}),
        "llm_activities_completed": completed,
    }


def problems(baseline: Outcome, chaos: Outcome, progress_bound: float = PROGRESS_BOUND_SECONDS) -> list[str]:
    """Every way `chaos` falls short of the promise, in words; empty when it keeps it."""
    found = []
    for outcome in (baseline, chaos):
        for wid, status in outcome.statuses.items():
            if status != "COMPLETED" or outcome.results.get(wid) is None:
                found.append(f"{outcome.label}: run {wid} is {status}: {outcome.errors.get(wid, '')}")
            else:
                result = outcome.results[wid]
                assert result is not None
                bad = [s.id for s in (result.plan.steps if result.plan else []) if s.status != "done"]
                if bad:
                    found.append(f"{outcome.label}: run {wid} has steps not done: {bad}")
        if outcome.containers_left:
            found.append(f"{outcome.label}: sandbox containers left behind: {outcome.containers_left}")
        if outcome.worker_exit_code != 0:
            found.append(f"{outcome.label}: the last worker exited with {outcome.worker_exit_code}")
        accounting = llm_accounting(outcome)
        if accounting["distinct_calls_answered"] != accounting["llm_activities_completed"]:
            found.append(
                f"{outcome.label}: LLM calls answered and LLM activities completed differ: {accounting}"
            )
    for wid, report in baseline.reports.items():
        if chaos.reports.get(wid) != report:
            found.append(f"the report of {wid} differs from the clean run's")
    unexplained = [r for r in repeats(chaos) if not r.kill_between]
    if unexplained:
        found.append(f"LLM calls repeated with no kill between: {unexplained}")
    if len(repeats(chaos)) > in_flight_at_kills(chaos):
        found.append(
            f"{len(repeats(chaos))} repeats, more than the {in_flight_at_kills(chaos)} calls in flight at kills"
        )
    for r in chaos.restarts:
        if r.exited_by_itself is not None:
            found.append(f"a worker had exited by itself (code {r.exited_by_itself}) before it was killed")
    for rec in recoveries(chaos):
        if rec.open_runs and (rec.slowest_run is None or rec.slowest_run > progress_bound):
            found.append(
                f"a run stood still over {progress_bound:g} s after worker restart {rec.restart}: {rec}"
            )
    return found


def figures(baseline: Outcome, chaos: Outcome) -> dict[str, object]:
    """The numbers a person reads: what was broken, what survived, how fast runs moved again."""
    recs = recoveries(chaos)
    anys = [r.first_any for r in recs if r.first_any is not None]
    slow = [r.slowest_run for r in recs if r.slowest_run is not None]
    accounting = llm_accounting(chaos)
    reps = repeats(chaos)
    timeouts: Counter[str] = Counter()
    attempts: Counter[int] = Counter()
    for trace in chaos.traces.values():
        timeouts.update(kind for _, kind, _ in trace.workflow_task_timeouts)
        attempts.update(trace.attempts)
    return {
        "runs": len(chaos.statuses),
        "runs_completed": sum(1 for s in chaos.statuses.values() if s == "COMPLETED"),
        "reports_identical": sum(
            1 for w, rep in baseline.reports.items() if rep and chaos.reports.get(w) == rep
        ),
        "worker_kills": sum(1 for r in chaos.restarts if r.kind == "worker"),
        "server_kills": sum(1 for r in chaos.restarts if r.kind == "server"),
        "llm_faults": {k: v for k, v in Counter(s.outcome for s in chaos.served).items() if k != "ok"},
        **accounting,
        "repeated_calls": len(reps),
        "repeats_unexplained": sum(1 for r in reps if not r.kill_between),
        "llm_calls_in_flight_at_kills": in_flight_at_kills(chaos),
        "worker_startup_s_max": _round(max((r.startup for r in recs), default=None)),
        "progress_after_restart_s_p50": _round(statistics.median(anys) if anys else None),
        "progress_after_restart_s_max": _round(max(anys, default=None)),
        "every_run_moving_after_restart_s_max": _round(max(slow, default=None)),
        "progress_from_worker_spawn_s_max": _round(
            max((r.from_spawn_any for r in recs if r.from_spawn_any is not None), default=None)
        ),
        "progress_after_server_restart_s": _round(server_recovery(chaos)),
        "workflow_task_timeouts": dict(timeouts),
        "activity_final_attempts": dict(sorted(attempts.items())),
        "wall_s_clean": _round(baseline.wall_seconds),
        "wall_s_chaos": _round(chaos.wall_seconds),
        "containers_left": len(chaos.containers_left) + len(baseline.containers_left),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)

"""Chaos for Cairn: runs at once while workers die, the Temporal server dies and the LLM misbehaves.

Why this exists: "a run survives crashes without losing or repeating completed work" is Cairn's main
promise, and only a test that breaks things at random proves it. `run_scenario` starts research runs
on a dev server and a worker process of their own, against the scripted LLM; in chaos mode it
SIGKILLs the worker at seeded random moments and starts a new one, kills the dev server once and
restarts it on the same database file, and fails a share of LLM requests (429 with Retry-After, 500, a
timeout, malformed JSON: testkit/chaos_faults.py). The `Outcome` it returns (testkit/chaos_evidence.py)
holds the evidence: the reports, every LLM request and what it got, the runs' histories (read by
testkit/chaos_history.py), the kills and restarts, and the sandbox containers left behind;
testkit/chaos_checks.py turns it into verdicts and figures. tests/test_chaos.py
runs a short scenario, bench/chaos.py a long one; each compares against a clean run of the same
questions.

Must never: kill a process it did not start (workers and the server are killed by their own pid or
process group, never by name), or leave one running when the scenario ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from client.api import CairnClient
from common.config import TemporalConfig
from common.models import ResearchResult
from common.plugin import connect, data_converter
from testkit import processes
from testkit.chaos_evidence import Outcome, Restart
from testkit.chaos_faults import FaultInjector
from testkit.chaos_history import Waiting, trace_run, waiting_on
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite
from testkit.scripted_llm import ScriptedLLM

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-cairn-chaos"


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
        processes.kill(self.process, group=True)
        return killed_at

    def stop(self, seconds: float = 30.0) -> int | None:
        """SIGTERM and wait: the worker finishes its tasks and closes its sandbox pool. Returns the exit
        code, or None when it had to be killed after `seconds`."""
        if self.process is None:
            return None
        return processes.stop(self.process, seconds, group=True)


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

    from activities.sandbox.engine import LABEL, LABEL_OWNER

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
    # The next kill comes this long (uniformly at random) after every open run moved again under the
    # restarted worker, or after the restarted server answered.
    kill_gap: tuple[float, float] = (0.5, 3.0)


@dataclass
class Settings:
    latency: float = 0.05  # the scripted LLM's per-call latency
    llm_timeout: float = 3.0  # CAIRN_LLM_TIMEOUT of the worker; a "timeout" fault sleeps 1 s longer
    run_timeout: float = 600.0
    sandbox_pool_size: int = 1
    # Extra dev-server arguments, e.g. ["--dynamic-config-value", 'history.defaultWorkflowTaskTimeout="5s"']
    # to try a shorter workflow task timeout than the server's default of 10 s.
    server_args: list[str] = field(default_factory=list)


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
        await asyncio.to_thread(server.start)
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
        waiting = asyncio.create_task(_wait_closed(client, ids, settings.run_timeout))
        try:
            # Either the runs close, or breaking things fails (a worker that never polls, say): then
            # stop waiting at once and say why.
            await asyncio.wait({breaking, waiting}, return_when=asyncio.FIRST_EXCEPTION)
            if breaking.done() and breaking.exception() is not None:
                waiting.cancel()
                await breaking  # raises what went wrong
            statuses = await waiting
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
        restart = Restart(
            "worker", killed_at, worker.spawned_at, ready_at, worker.pid, worker.identity_prefix, gone
        )
        restart.waiting = await _waiting(client, workflow_ids)
        restarts.append(restart)
        await _until_moved(client, workflow_ids, worker.identity_prefix, closed, restart.stalls)
    return restarts


async def _waiting(client: Client, workflow_ids: list[str]) -> dict[str, list[Waiting]]:
    """What each open run waits on now (runs that closed, or that the server cannot describe, left out)."""
    found = {}
    for wid in workflow_ids:
        with contextlib.suppress(RPCError):
            snapshot = await waiting_on(client, wid, time.time())
            if snapshot and (snapshot[0].workflow_task or snapshot[0].activities or snapshot[0].children):
                found[wid] = snapshot
    return found


# After this long without moving, a run's pending work is recorded every second as evidence.
STALL_EVIDENCE_AFTER = 3.0


async def _until_moved(
    client: Client,
    workflow_ids: list[str],
    identity_prefix: str,
    closed: asyncio.Event,
    stalls: list[Waiting],
    seconds: float = 60,
) -> None:
    """Wait until every open run has an event written by the worker `identity_prefix` (or has closed).
    Gives up after `seconds`: the analysis reports a run that stood still, the chaos goes on. A run
    that takes longer than STALL_EVIDENCE_AFTER has its pending work appended to `stalls` each second."""
    started = time.monotonic()
    deadline = started + seconds
    next_look = started + STALL_EVIDENCE_AFTER
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
        if waiting and time.monotonic() >= next_look:
            next_look += 1.0
            for snapshot in (await _waiting(client, waiting)).values():
                stalls.extend(snapshot)
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

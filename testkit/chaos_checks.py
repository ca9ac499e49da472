"""What the chaos suite checks, read from the runs' histories and the scripted server's request log.

Why this exists: "no completed call runs again" and "runs move again within seconds" are claims about
what happened inside Temporal, so they are checked on history (who completed which task, when), not on
outputs. testkit/chaos_history.py reads the histories; `repeats`, `recoveries`, `problems` and
`figures` turn an Outcome (testkit/chaos_evidence.py) into verdicts and numbers.

Must never: call a repeat harmless unless a kill caught its reply in flight, or count an event of a
dead worker as progress of its successor.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from testkit.chaos_evidence import Outcome
from testkit.chaos_faults import Served
from testkit.chaos_history import Waiting

# The promise: every run open at a worker restart moves again this soon after the new worker polls:
# a call in flight is retried 2 s after its last heartbeat and 0.2 s later, a workflow task waits 1 s
# on the dead worker's sticky queue, and the new worker replays every open run and step at once
# (bench/chaos.py has seen 3.8 s with 8 runs open). And the new worker polls this soon after its
# process starts (imports, connecting; the sandbox comes later).
PROGRESS_BOUND_SECONDS = 4.0
STARTUP_BOUND_SECONDS = 2.5

# -- when a run's work came due --------------------------------------------------------------------


def due_at(snapshot: Sequence[Waiting], since: float) -> float:
    """When a run first had work a worker could take, from a snapshot of it (all its open workflows)
    taken at `since` or just after: at once, unless every workflow of it with pending work was only
    waiting out activity retry backoff (after failed attempts: faults, or kills whose heartbeat timeout
    has already fired); then when the first backoff ends. Work the dead worker held (a started
    activity or workflow task) counts as due at once: getting it back is what the restart's timeouts
    are for."""
    ends = [w.backoff_until for w in snapshot if w.backoff_until is not None]
    busy = [w for w in snapshot if w.backoff_until is None and (w.workflow_task or w.activities)]
    if busy or not ends:
        return since
    return max(since, min(ends))


# -- analysis --------------------------------------------------------------------------------------


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
    """How soon runs moved after worker restart number `restart`, in seconds from the new worker's
    first poll, or from when a run's work came due if later (see `recoveries`); None where a run never
    moved."""

    restart: int
    startup: float  # process start to first poll: imports, connecting, reaping, the sandbox pool
    first_any: float | None  # the first run the new worker took up
    slowest_run: float | None  # the last run it took up, from when that run's work was due
    open_runs: int
    slowest: str = ""  # which run it took up last (or not at all)
    # The last run to have a workflow task or activity *completed* by the new worker: also counts the
    # work itself, such as replaying a run's history on a cold worker, which takes seconds under load.
    slowest_done: float | None = None
    # As slowest_run, but from the first poll even for a run that was only waiting out retry backoff.
    slowest_from_poll: float | None = None
    waited_out_backoff: int = 0  # open runs whose work was not yet due at the first poll


def recoveries(outcome: Outcome) -> list[Recovery]:
    """How soon each run that was open at a worker restart moved again: the first workflow task or
    activity of the run the new worker started (its identity is on the event), or the first LLM request
    of the run after the new worker began to poll (the run is being worked on, even when that attempt
    then meets an injected fault), whichever comes first. That is what Temporal's timeouts govern: how
    soon a dead worker's work reaches the new one.

    It is measured from the new worker's first poll, or, for a run whose every pending activity was then
    waiting out its retry backoff after failed attempts (and that had nothing else pending), from when
    that backoff ended: before then no worker may take it. Work the dead worker held counts from the
    poll."""
    found = []
    worker_restarts = [r for r in outcome.restarts if r.kind == "worker"]
    for n, r in enumerate(worker_restarts, 1):
        # The poll is seen by asking the server every 50 ms: the worker may start its first task a
        # moment before. It is ready at whichever comes first.
        its = [
            p for t in outcome.traces.values() for p in t.progress if p.identity.startswith(r.identity_prefix)
        ]
        ready = min([r.ready_at, *(p.at for p in its)])
        firsts: dict[str, float | None] = {}
        dues: dict[str, float] = {}
        dones: dict[str, float | None] = {}
        for trace in outcome.traces.values():
            if trace.closed_at is not None and trace.closed_at <= r.spawned_at:
                continue
            wid = trace.workflow_id
            mine = [p for p in its if p in trace.progress]
            question = outcome.questions.get(wid)
            taken = [p.at for p in mine] + [
                s.at for s in outcome.served if s.question == question and s.at > ready
            ]
            firsts[wid] = min(taken) if taken else None
            dues[wid] = due_at(r.waiting.get(wid, []), ready)
            finished = [p.at for p in mine if p.done]
            dones[wid] = min(finished) if finished else None
        seen = [f for f in firsts.values() if f is not None]
        stuck = [wid for wid, f in firsts.items() if f is None]
        late = {wid: (f - dues[wid] if f is not None else None) for wid, f in firsts.items()}
        found.append(
            Recovery(
                restart=n,
                startup=ready - r.spawned_at,
                first_any=min(seen) - ready if seen else None,
                slowest_run=_latest(late, 0.0),  # each run's delay is already from its own due time
                open_runs=len(firsts),
                slowest=stuck[0] if stuck else max(late, key=lambda w: late[w] or 0.0, default=""),
                slowest_done=_latest(dones, ready),
                slowest_from_poll=_latest(firsts, ready),
                waited_out_backoff=sum(1 for d in dues.values() if d > ready),
            )
        )
    return found


def _latest(firsts: dict[str, float | None], since: float) -> float | None:
    """Seconds from `since` to the last of `firsts`; None if any is None (a run never moved)."""
    if not firsts or None in firsts.values():
        return None
    return max(f for f in firsts.values() if f is not None) - since


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
                f"a run was not taken up within {progress_bound:g} s of worker restart {rec.restart}: {rec}"
            )
    return found


def figures(baseline: Outcome, chaos: Outcome) -> dict[str, object]:
    """The numbers a person reads: what was broken, what survived, how fast runs moved again."""
    recs = [r for r in recoveries(chaos) if r.open_runs]
    slow = [r.slowest_run for r in recs if r.slowest_run is not None]
    startups = [r.startup for r in recs]
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
        "worker_startup_s_p50": _round(statistics.median(startups) if startups else None),
        "worker_startup_s_max": _round(max(startups, default=None)),
        "every_run_taken_up_after_restart_s_p50": _round(statistics.median(slow) if slow else None),
        "every_run_taken_up_after_restart_s_max": _round(max(slow, default=None)),
        "every_run_taken_up_after_first_poll_s_max": _round(
            max((r.slowest_from_poll for r in recs if r.slowest_from_poll is not None), default=None)
        ),
        "runs_waiting_out_retry_backoff_at_restarts": sum(r.waited_out_backoff for r in recs),
        "every_run_completing_work_after_restart_s_max": _round(
            max((r.slowest_done for r in recs if r.slowest_done is not None), default=None)
        ),
        "every_run_taken_up_after_worker_spawn_s_max": _round(
            max((r.startup + r.slowest_run for r in recs if r.slowest_run is not None), default=None)
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

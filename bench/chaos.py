"""The chaos suite, long version: more runs, more kills, and the figures the README quotes.

Runs the same questions twice on fresh dev servers and worker processes (testkit/chaos.py): once clean,
once while the worker is SIGKILLed `--kills` times at seeded random moments, the dev server is killed
once and restarted on its database file, and `--fault-rate` of LLM requests fail (429 with
Retry-After, 500, a timeout, malformed JSON). Prints and publishes (bench/results/chaos.json): runs
completed, reports identical to the clean run's, LLM requests answered against LLM activities
completed, repeated calls (and whether a kill explains each), how soon runs moved after each worker
restart, wall times, and sandbox containers left. Exits 1 when any promise is broken, naming it.

    python -m bench.chaos [--runs 8] [--steps 4] [--kills 8] [--seed 27] [--fault-rate 0.2]
                          [--latency-ms 50] [--workflow-task-timeout S] [--keep]

`--workflow-task-timeout` sets the dev server's default workflow task timeout (Temporal's default is
10 s); Cairn sets 5 s on every run and step it starts, which takes precedence. Needs the Docker engine and the sandbox image
(`bash sandbox_images/engine.sh`; the image is built if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_io import publish
from testkit.chaos import Chaos, Settings, run_scenario, standard_runs
from testkit.chaos_checks import figures, problems, recoveries, repeats
from testkit.research_site import ResearchSite

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "chaos.json"


def ensure_sandbox() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "sandbox_images" / "engine.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"the Docker engine is not available:\n{done.stdout}{done.stderr}")
    from sandbox_images.build import ensure_image

    ensure_image()


async def bench(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, object], list[str]]:
    settings = Settings(latency=args.latency_ms / 1000, run_timeout=args.run_timeout)
    if args.workflow_task_timeout:
        value = f'history.defaultWorkflowTaskTimeout="{args.workflow_task_timeout:g}s"'
        settings.server_args = ["--dynamic-config-value", value]
    chaos = Chaos(
        worker_kills=args.kills,
        server_kill=True,
        fault_rate=args.fault_rate,
        seed=args.seed,
        kill_gap=(args.gap_min, args.gap_max),
    )
    runs = standard_runs(args.runs, steps=args.steps)
    home = workdir / "home"
    site = ResearchSite().start()
    try:
        clean = await run_scenario("clean", runs, workdir / "clean", home, site, settings=settings)
        await asyncio.to_thread(home.rename, workdir / "clean-home")
        broken = await run_scenario("chaos", runs, workdir / "chaos", home, site, chaos, settings)
    finally:
        site.stop()
    for recovery in recoveries(broken):
        print(recovery)
    kills = [r.killed_at for r in broken.restarts]
    for repeat in repeats(broken):
        after = [round(k - repeat.first_at, 2) for k in kills if repeat.first_at < k < repeat.again_at]
        print(f"repeated {repeat.role} call {repeat.key}: kills {after} s after its first answer")
    report: dict[str, object] = {
        "seed": args.seed,
        "steps_per_run": args.steps,
        "fault_rate": args.fault_rate,
        "stub_latency_ms": args.latency_ms,
        "workflow_task_timeout_s": args.workflow_task_timeout or "5 (Cairn sets it on every run and step)",
        "worker_kills_planned": args.kills,
        **figures(clean, broken),
    }
    return report, problems(clean, broken)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument(
        "--kills", type=int, default=8, help="worker SIGKILLs (the server is killed once too)"
    )
    parser.add_argument("--steps", type=int, default=4, help="research steps per run")
    # The default seed must make the default runs meet every kind of fault at every role (check it with
    # testkit.chaos_faults.choose_fault over a clean run's requests); 27 does for eight runs of four steps.
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--gap-min", type=float, default=0.5, help="seconds from recovery to the next kill")
    parser.add_argument("--gap-max", type=float, default=3.0)
    parser.add_argument("--workflow-task-timeout", type=float, default=0.0)
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the logs and databases, and print where")
    args = parser.parse_args()
    ensure_sandbox()
    workdir = Path(tempfile.mkdtemp(prefix="cairn-chaos-"))
    report, found = asyncio.run(bench(args, workdir))
    name = RESULTS.stem + (f"_wft{args.workflow_task_timeout:g}" if args.workflow_task_timeout else "")
    publish(report, RESULTS.with_name(f"{name}.json"))
    for problem in found:
        print(f"PROBLEM: {problem}")
    if args.keep or found:
        print(f"logs and databases: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    raise SystemExit(1 if found else 0)


if __name__ == "__main__":
    main()

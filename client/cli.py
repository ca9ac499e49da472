"""The `cairn` command: a thin shell over client/api.py and client/embedded.py.

Human-readable output by default and `--json` for machines; with `--json`, stdout carries only JSON and
every notice goes to stderr. Exit codes: 0 success, 1 a refused or failed request, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from temporalio.service import RPCError

from client.api import CairnClient, CairnError, validated_input, validated_workflow_id
from client.doctor import add_doctor_command
from client.embedded import Embedded, EmbeddedError, port_open
from client.http_client import ApiClient, api_settings
from client.ingest_cli import add_ingest_command
from client.keys_cli import add_keys_command
from client.living_cli import add_living_commands
from client.report_cli import report_bytes, write_report
from client.sandbox_cli import add_sandbox_commands
from client.server.serve import add_serve_command
from client.tenant_cli import add_tenant_commands
from client.watch import watch
from client.web.export import FORMATS
from common.config import ConfigError, LLMConfig, TemporalConfig, private_files
from common.domains import deployment_policy
from common.models import RunStatus
from common.tenancy import DEFAULT_TENANT, check_run_id
from common.tracing import shutdown_process_tracing

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

# A plan edit is a few kilobytes; a larger file is a mistake, and reading it whole would cost memory.
MAX_EDIT_BYTES = 1024 * 1024


def _notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


async def _connect(start_embedded: bool = False) -> CairnClient | ApiClient:
    """The Cairn API when CAIRN_API_URL is set (within the key's tenant and role); else the configured
    Temporal; with nothing configured, the embedded server, which `research` and `dev` start (with a
    worker) when it is not running."""
    if api_settings() is not None:
        return ApiClient.from_env()
    return await _connect_temporal(start_embedded)


async def _connect_temporal(start_embedded: bool = False) -> CairnClient:
    config = TemporalConfig.from_env()
    if not config.explicit:
        embedded = Embedded.from_env()
        if start_embedded:
            if embedded.ensure_server():
                _notice(
                    f"Started Cairn's embedded Temporal server at {embedded.address} "
                    f"(Web UI {embedded.ui_url}); `cairn dev stop` ends it."
                )
            if embedded.pid("server") is not None and embedded.ensure_worker():
                _notice(f"Started a Cairn worker (log: {embedded.home / 'logs' / 'worker.log'}).")
        elif not port_open(embedded.port):
            raise CairnError(
                f"no Temporal server answers at {embedded.address}: run `cairn dev`, "
                "or set TEMPORAL_ADDRESS to your server"
            )
    try:
        cairn = await CairnClient.connect(config)
    except RuntimeError as err:
        raise CairnError(f"cannot reach Temporal at {config.address}: {err}") from None
    if start_embedded and not config.explicit:
        await cairn.register_search_attributes()  # Our own server: make runs filterable.
    return cairn


def render_status(workflow_id: str, status: RunStatus) -> str:
    lines = [f"Run {workflow_id}: {status.phase}", f"Question: {status.question}"]
    if status.plan is not None:
        lines.append(f"Plan v{status.plan.version}:")
        for step in status.plan.steps:
            lines.append(f"  {step.id:>4} [{step.status:^8}] {step.title} ({step.kind})")
            if step.error:
                lines.append(f"       {step.error}")
    lines.append(f"Spend: {status.usage.describe()}")
    budget = status.budget
    limits = [
        f"tokens {budget.tokens_spent:,} of {budget.token_budget:,}" if budget.token_budget else "",
        f"cost ${budget.cost_spent_usd:.4f} of ${budget.cost_budget_usd:.4f}"
        if budget.cost_budget_usd
        else "",
        f"{budget.seconds_remaining:.0f} s to the deadline" if budget.seconds_remaining is not None else "",
    ]
    if any(limits):
        lines.append("Budget: " + "; ".join(x for x in limits if x))
    if status.phase == "paused":
        lines.append(f"Paused: {budget.reached} was reached. Go on with:")
        lines.append(f"  cairn raise-budget {workflow_id} --tokens N --cost USD --deadline SECONDS")
    elif status.phase == "clarifying" and status.clarification is not None:
        lines.append("The planner asks, before it plans:")
        lines += [f"  - {q}" for q in status.clarification.questions]
        lines.append(f'Answer with:\n  cairn answer {workflow_id} "your answer"')
    elif status.waiting_for:
        lines.append(f"Waiting for {status.waiting_for}:")
        lines.append(f"  cairn approve {workflow_id}")
        lines.append(f'  cairn revise {workflow_id} "what to change"')
        lines.append(f"  cairn edit {workflow_id} plan.json")
    if status.report_path:
        lines.append(f"Report: {status.report_path}")
    if status.error:
        lines.append(f"Error: {status.error}")
    return "\n".join(lines)


async def _follow(cairn: CairnClient | ApiClient, workflow_id: str) -> None:
    """While `--wait` waits, show each plan version that needs approval (once)."""
    shown = 0
    while True:
        try:
            status = await cairn.status(workflow_id)
        except Exception:
            status = None
        if status and status.phase == "awaiting_approval" and status.plan and status.plan.version > shown:
            shown = status.plan.version
            _notice(render_status(workflow_id, status))
        elif status and status.phase == "clarifying" and shown == 0:
            shown = -1  # Once: the questions do not change.
            _notice(render_status(workflow_id, status))
        await asyncio.sleep(1.0)


async def _worker_appears(cairn: CairnClient, seconds: float) -> bool:
    """Whether a worker polls the task queue within `seconds`: one started a moment ago (the embedded
    worker) needs a few seconds to connect, and warning about it would be a false alarm."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await cairn.has_pollers():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.5)
    return True


async def cmd_research(args: argparse.Namespace) -> int:
    options = {
        "auto_approve": args.auto_approve,
        "max_steps": args.max_steps,
        "max_parallel_steps": args.max_parallel,
        "max_plan_iterations": args.max_plan_iterations,
        "approval_timeout_seconds": args.approval_timeout,
        "on_approval_timeout": args.on_approval_timeout,
        "token_budget": args.token_budget,
        "cost_budget_usd": args.cost_budget,
        "deadline_seconds": args.deadline,
        "on_budget": args.on_budget,
        "clarify": args.clarify,
        "library": args.library,
    }
    options = {k: v for k, v in options.items() if v is not None}
    validated_input(args.question, **options)  # Refuse bad input before starting anything.
    if args.id is not None:
        validated_workflow_id(args.id)
        try:
            check_run_id(args.id, DEFAULT_TENANT)
        except ValueError as err:
            raise CairnError(f"invalid run id: {err}") from None
    if api_settings() is None:
        LLMConfig.from_env().require()  # Through the API, the model is the server's to configure.
        # Through the API, the domain policy is the server's (the deployment's and the tenant's).
        options["domains"] = deployment_policy()
    cairn = await _connect(start_embedded=True)
    workflow_id = await cairn.start(args.question, workflow_id=args.id, **options)
    if isinstance(cairn, CairnClient) and not await _worker_appears(cairn, seconds=10):
        _notice(
            f"Warning: no worker polls task queue '{cairn.task_queue}'; start one with `python worker.py`."
        )
    if not args.wait:
        _emit(args, {"workflow_id": workflow_id}, f"Started {workflow_id}\n  cairn status {workflow_id}")
        return 0
    _notice(f"Started {workflow_id}; waiting for it to finish.")
    follower = asyncio.create_task(_follow(cairn, workflow_id))
    try:
        result = await cairn.result(workflow_id)
    finally:
        follower.cancel()
    _emit(args, result, result.report)
    return 0


async def cmd_status(args: argparse.Namespace) -> int:
    cairn = await _connect()
    status = await cairn.status(args.id)
    _emit(args, status, render_status(args.id, status))
    return 0


async def cmd_approve(args: argparse.Namespace) -> int:
    version = await (await _connect()).approve(args.id, args.version)
    _emit(args, {"workflow_id": args.id, "approved": version}, f"Approved plan v{version} of {args.id}")
    return 0


async def cmd_revise(args: argparse.Namespace) -> int:
    version = await (await _connect()).revise(args.id, args.feedback, args.version)
    _emit(args, {"workflow_id": args.id, "revising": version}, f"Asked for changes to plan v{version}")
    return 0


def _read_steps(path: str) -> list[dict[str, Any]]:
    """The steps in a JSON file (or stdin), at most MAX_EDIT_BYTES; anything unreadable is one CairnError."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_EDIT_BYTES + 1)
        else:
            with Path(path).open("rb") as file:
                raw = file.read(MAX_EDIT_BYTES + 1)
    except OSError as err:
        raise CairnError(f"cannot read {path}: {err.strerror}") from None
    if len(raw) > MAX_EDIT_BYTES:
        raise CairnError(f"{path} is larger than {MAX_EDIT_BYTES:,} bytes; a plan edit is far smaller")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise CairnError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise CairnError(f"{path} is not JSON: {err.msg} at line {err.lineno}") from None
    except RecursionError:
        raise CairnError(f"{path} is nested too deeply to be a plan") from None
    except ValueError as err:  # JSON the parser reads but Python cannot hold, e.g. a 5000-digit number.
        raise CairnError(f"{path} cannot be read as a plan: {err}") from None
    steps = data.get("steps") if isinstance(data, dict) else data
    if not isinstance(steps, list):
        raise CairnError(f'{path} must hold a list of steps or an object {{"steps": [...]}}')
    return steps


async def cmd_edit(args: argparse.Namespace) -> int:
    steps = _read_steps(args.file)
    plan = await (await _connect()).edit(args.id, steps, args.version)
    text = f"Plan v{plan.version} of {args.id} awaits approval:\n" + "\n".join(
        f"  {s.id:>4} {s.title} ({s.kind})" for s in plan.steps
    )
    _emit(args, plan, text)
    return 0


async def cmd_answer(args: argparse.Namespace) -> int:
    clarification = await (await _connect()).answer(args.id, args.text)
    _emit(
        args, clarification, f"Answered {len(clarification.questions)} question(s) of {args.id}; it plans now"
    )
    return 0


async def cmd_abort(args: argparse.Namespace) -> int:
    await (await _connect()).abort(args.id, args.reason)
    _emit(args, {"workflow_id": args.id, "abort_requested": True}, f"Asked {args.id} to abort")
    return 0


async def cmd_watch(args: argparse.Namespace) -> int:
    cairn = await _connect()
    await cairn.status(args.id)  # A clear "no run with id" before anything is drawn.
    return await watch(cairn, args.id, Console(highlight=False), interval=args.interval)


async def cmd_report(args: argparse.Namespace) -> int:
    cairn = await _connect()
    status = await cairn.status(args.id)
    if status.phase not in ("done", "aborted"):
        raise CairnError(f"run {args.id} is {status.phase}; its report is not written yet")
    if args.format == "md" and args.output is None:
        result = await cairn.result(args.id)
        _emit(args, result, result.report)
        return 0
    data = await report_bytes(cairn, args.id, args.format)
    written = write_report(data, args.id, args.format, args.output)
    if written != "-":
        _emit(args, {"path": written, "bytes": len(data)}, f"Wrote {written} ({len(data):,} bytes)")
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    runs = await (await _connect()).list(args.limit)
    text = (
        "\n".join(
            f"{r.workflow_id}  {r.status:<12} {r.start_time:%Y-%m-%d %H:%M:%S}"
            if r.start_time
            else r.workflow_id
            for r in runs
        )
        or "No runs."
    )
    _emit(args, [r.__dict__ for r in runs], text)
    return 0


async def cmd_dev(args: argparse.Namespace) -> int:
    embedded = Embedded.from_env()
    if args.action == "stop":
        stopped = embedded.stop()
        _emit(args, {"stopped": stopped}, "Stopped " + (" and ".join(stopped) or "nothing: nothing ran"))
        return 0
    cairn = await _connect_temporal(start_embedded=True)
    from client.retention import keep_histories_as_long_as_files

    await keep_histories_as_long_as_files(cairn.temporal)
    info = {"address": embedded.address, "ui": embedded.ui_url, "home": str(embedded.home)}
    _emit(
        args,
        info,
        f"Temporal at {embedded.address}, Web UI {embedded.ui_url}, a worker on task queue "
        f"'{TemporalConfig.from_env().task_queue}'; data in {embedded.home}. `cairn dev stop` ends them.",
    )
    return 0


async def cmd_skip(args: argparse.Namespace) -> int:
    await (await _connect()).skip_step(args.id, args.step)
    _emit(args, {"skipped": args.step}, f"Asked {args.id} to skip step {args.step}.")
    return 0


async def cmd_add_step(args: argparse.Namespace) -> int:
    await (await _connect()).add_step(args.id, args.title, args.kind, args.description)
    _emit(args, {"added": args.title}, f"Asked {args.id} to add the step: {args.title}")
    return 0


async def cmd_raise_budget(args: argparse.Namespace) -> int:
    budget = await (await _connect()).raise_budget(
        args.id, token_budget=args.tokens, cost_budget_usd=args.cost, deadline_seconds=args.deadline
    )
    _emit(args, budget, f"Budget of {args.id} is now: {budget.model_dump_json(exclude_none=True)}")
    return 0


async def cmd_replay(args: argparse.Namespace) -> int:
    from client.replay import replay_run

    cairn = await _connect_temporal()
    try:
        outcomes = await replay_run(cairn.temporal, args.id, children=not args.no_children)
    except RPCError as err:
        raise CairnError(f"cannot fetch the history of {args.id}: {err.message}") from None
    lines = [
        f"{'ok  ' if o.ok else 'FAIL'} {o.workflow_type} {o.workflow_id} ({o.events} events)"
        + (f"\n     {o.problem}" if o.problem else "")
        for o in outcomes
    ]
    verdict = "replays cleanly" if all(o.ok for o in outcomes) else "does NOT replay against this code"
    _emit(args, [vars(o) for o in outcomes], "\n".join(lines) + f"\n{args.id} {verdict}.")
    return 0 if all(o.ok for o in outcomes) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cairn", description="Durable deep research on Temporal.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(handler=handler)
        return sub

    research = command("research", cmd_research, "start a research run")
    research.add_argument("question")
    research.add_argument("--auto-approve", action="store_true", help="approve every plan version")
    research.add_argument("--wait", action="store_true", help="wait for the report and print it")
    research.add_argument("--id", help="workflow id (default: research-<random>)")
    research.add_argument("--max-steps", type=int)
    research.add_argument("--max-parallel", type=int, help="steps run at once")
    research.add_argument("--max-plan-iterations", type=int, help="replans allowed")
    research.add_argument("--approval-timeout", type=float, help="seconds to wait for approval")
    research.add_argument("--on-approval-timeout", choices=["approve", "abort"])
    research.add_argument("--token-budget", type=int, help="tokens the whole run may spend")
    research.add_argument("--cost-budget", type=float, help="US dollars the whole run may spend")
    research.add_argument("--deadline", type=float, help="seconds from the start")
    research.add_argument("--on-budget", choices=["pause", "finish"], help="at a limit (default pause)")
    research.add_argument(
        "--clarify",
        choices=["auto", "never", "always"],
        help="clarifying questions before planning: when the question is ambiguous (auto, the default), "
        "never, or always",
    )
    research.add_argument(
        "--library",
        action=argparse.BooleanOptionalAction,
        help="search the tenant's library of earlier runs too",
    )

    for name, handler, help_text in (
        ("approve", cmd_approve, "approve the plan awaiting approval"),
        ("revise", cmd_revise, "ask the planner to change the plan"),
        ("edit", cmd_edit, "replace the plan's steps with those in a JSON file"),
    ):
        sub = command(name, handler, help_text)
        sub.add_argument("id")
        if name == "revise":
            sub.add_argument("feedback")
        if name == "edit":
            sub.add_argument(
                "file",
                help='JSON: [{"title", "kind", "description", "id"?}] or {"steps": [...]}; - for stdin',
            )
        sub.add_argument("--version", type=int, help="plan version (default: the one awaiting approval)")

    command("status", cmd_status, "show a run's phase, plan and usage").add_argument("id")
    report = command("report", cmd_report, "print a finished run's report, or write it as a file")
    report.add_argument("id")
    report.add_argument("--format", choices=FORMATS, default="md", help="md (default), html, pdf or docx")
    report.add_argument("--output", "-o", help="file to write (- for stdout; default <run id>.<format>)")
    answer = command("answer", cmd_answer, "answer the planner's clarifying questions")
    answer.add_argument("id")
    answer.add_argument("text", help="your answer to the questions, in one text")
    watch_cmd = command("watch", cmd_watch, "follow a run's progress live until it ends")
    watch_cmd.add_argument("id")
    watch_cmd.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    abort = command("abort", cmd_abort, "stop a run; a partial report is written")
    abort.add_argument("id")
    abort.add_argument("--reason", default="aborted by a person")
    command("list", cmd_list, "list research runs").add_argument("--limit", type=int, default=20)
    skip = command("skip", cmd_skip, "skip a pending step, or cancel a running one")
    skip.add_argument("id")
    skip.add_argument("step", help="step id, e.g. s3")
    add = command("add-step", cmd_add_step, "add a step to a running run")
    add.add_argument("id")
    add.add_argument("title")
    add.add_argument("--kind", choices=["research", "code"], default="research")
    add.add_argument("--description", default="")
    raise_cmd = command("raise-budget", cmd_raise_budget, "raise a run's limits (a paused run goes on)")
    raise_cmd.add_argument("id")
    raise_cmd.add_argument("--tokens", type=int, help="new token budget for the whole run")
    raise_cmd.add_argument("--cost", type=float, help="new cost budget, US dollars")
    raise_cmd.add_argument("--deadline", type=float, help="new deadline, seconds from the start")
    replay = command("replay", cmd_replay, "replay a run's history against this code (no LLM calls)")
    replay.add_argument("id")
    replay.add_argument("--no-children", action="store_true", help="skip the steps' child workflows")
    dev = command("dev", cmd_dev, "start (or stop) the embedded Temporal server and a worker")
    dev.add_argument("action", nargs="?", choices=["start", "stop"], default="start")
    add_sandbox_commands(commands)
    add_ingest_command(commands)
    add_doctor_command(commands)
    add_serve_command(commands)
    add_keys_command(commands)
    add_living_commands(commands)
    add_tenant_commands(commands)
    return parser


def _not_utf8(argv: list[str]) -> str | None:
    """The first argument whose bytes were not UTF-8: Python holds them as lone surrogates, which no
    request to Temporal can carry."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg
    return None


def _runner(command: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """How a command runs its event loop: `serve` on uvloop where it is installed (every request's
    parsing, TLS-free socket work and Temporal calls go through the loop), the rest on asyncio's."""
    if command == "serve":
        try:
            import uvloop
        except ImportError:
            return asyncio.run
        return uvloop.run
    return asyncio.run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # File names need not be UTF-8 (`cairn ingest` takes them as they are); every other argument
    # reaches Temporal, which carries only text.
    bad = None if args.command == "ingest" else _not_utf8(sys.argv[1:] if argv is None else argv)
    if bad is not None:
        print(f"cairn: an argument is not UTF-8 text: {bad!r}", file=sys.stderr)
        return 1
    try:
        return _runner(args.command)(args.handler(args))
    except (CairnError, ConfigError, EmbeddedError) as err:
        print(f"cairn: {err}", file=sys.stderr)
        return 1
    except RPCError as err:  # Calls about one run are translated in client/api.py; this is the rest.
        print(f"cairn: {' '.join(err.message.split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry point. Exits without interpreter finalization: the Temporal client's
    native runtime threads can still hold callbacks then, and Python aborts ("PyGILState_Release")
    when they fire during shutdown. Everything worth keeping is flushed first."""
    private_files()
    code = main()
    shutdown_process_tracing()  # os._exit skips atexit: export the command's spans first.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()

"""`cairn schedule …` and `cairn followup`: living research from the command line.

Through the API when CAIRN_API_URL is set (within the key's tenant and role, `/v1/schedules` and
`/v1/runs/{id}/followup`); else straight to Temporal as the tenant `default`, like every other command
without the API. Human-readable output by default, `--json` for machines (`schedule create --json`
prints the schedule with its `id`).
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from client.api import CairnClient, CairnError, validated_input, validated_workflow_id
from client.http_client import ApiClient, api_settings
from client.schedules import OVERLAPS, Backfill, ScheduleRequest, Schedules, ScheduleView
from common.domains import deployment_policy
from common.models import RunRequest
from common.tenancy import DEFAULT_TENANT, library_scope
from common.tool_models import CorpusResults
from workflows.inputs import explain

# The run options `cairn research` takes, as (flag, RunRequest field, type, help).
RUN_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--max-steps", "max_steps", int, "steps in a plan"),
    ("--max-parallel", "max_parallel_steps", int, "steps run at once"),
    ("--max-plan-iterations", "max_plan_iterations", int, "replans allowed"),
    ("--approval-timeout", "approval_timeout_seconds", float, "seconds to wait for approval"),
    ("--token-budget", "token_budget", int, "tokens a run may spend"),
    ("--cost-budget", "cost_budget_usd", float, "US dollars a run may spend"),
    ("--deadline", "deadline_seconds", float, "seconds from a run's start"),
]


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"auto_approve": args.auto_approve} if args.auto_approve else {}
    for _, name, _, _ in RUN_OPTIONS:
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    for name in ("on_approval_timeout", "on_budget", "library"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


def _render(view: ScheduleView) -> str:
    state = "paused" if view.paused else "active"
    lines = [
        f"{view.id}  {state}  cron '{view.cron}' ({view.time_zone}), overlap {view.overlap}",
        f"  {view.question}",
        f"  runs started: {view.runs_started}, skipped while one still ran: {view.skipped_overlap}",
    ]
    if view.next_runs:
        lines.append("  next: " + ", ".join(f"{t:%Y-%m-%d %H:%M %Z}" for t in view.next_runs[:3]))
    lines += [f"  running: {run}" for run in view.running]
    lines += [f"  ran: {r.run_id}" for r in view.recent[-5:]]
    if view.note:
        lines.append(f"  note: {view.note}")
    return "\n".join(lines)


class _Direct:
    """The default tenant's schedules, straight through Temporal."""

    def __init__(self, cairn: CairnClient) -> None:
        self.cairn = cairn
        self.schedules = Schedules(cairn)

    async def create(self, request: ScheduleRequest) -> ScheduleView:
        return await self.schedules.create(DEFAULT_TENANT, request, domains=deployment_policy())

    async def list(self) -> list[ScheduleView]:
        return await self.schedules.list(DEFAULT_TENANT)

    async def act(self, action: str, schedule_id: str, body: dict[str, Any]) -> ScheduleView | None:
        tenant = DEFAULT_TENANT
        if action == "describe":
            return await self.schedules.describe(tenant, schedule_id)
        if action == "pause":
            return await self.schedules.pause(tenant, schedule_id, body.get("note", ""))
        if action == "unpause":
            return await self.schedules.unpause(tenant, schedule_id, body.get("note", ""))
        if action == "trigger":
            await self.schedules.trigger(tenant, schedule_id)
            return None
        if action == "backfill":
            return await self.schedules.backfill(tenant, schedule_id, Backfill.model_validate(body))
        await self.schedules.delete(tenant, schedule_id)
        return None

    async def followup(self, run_id: str, request: RunRequest) -> str:
        state = await self.cairn.describe_status(run_id)
        if state is None or state.name != "COMPLETED":
            status = state.name.lower() if state else "not found"
            raise CairnError(f"run {run_id} is {status}; only a completed run can be followed up", "conflict")
        return await self.cairn.start(
            request.question, follows=run_id, domains=deployment_policy(), **_set(request)
        )


class _Http:
    """The key's tenant's schedules, through the API."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def create(self, request: ScheduleRequest) -> ScheduleView:
        body = request.model_dump(mode="json", exclude_unset=True)
        return ScheduleView.model_validate(await self.api.request("POST", "/v1/schedules", json=body))

    async def list(self) -> list[ScheduleView]:
        answer = await self.api.request("GET", "/v1/schedules")
        return [ScheduleView.model_validate(s) for s in answer["schedules"]]

    async def act(self, action: str, schedule_id: str, body: dict[str, Any]) -> ScheduleView | None:
        if "/" in schedule_id or not schedule_id:
            raise CairnError(f"no schedule with id {schedule_id[:200]}", "not_found")
        path = f"/v1/schedules/{schedule_id}"
        if action == "describe":
            return ScheduleView.model_validate(await self.api.request("GET", path))
        if action == "delete":
            await self.api.request("DELETE", path)
            return None
        if action == "trigger":
            await self.api.request("POST", f"{path}/trigger")
            return None
        return ScheduleView.model_validate(await self.api.request("POST", f"{path}/{action}", json=body))

    async def followup(self, run_id: str, request: RunRequest) -> str:
        if "/" in run_id or not run_id:
            raise CairnError(f"no run with id {run_id[:200]}", "not_found")
        body = request.model_dump(mode="json", exclude_unset=True)
        return str((await self.api.request("POST", f"/v1/runs/{run_id}/followup", json=body))["id"])


def _set(request: RunRequest) -> dict[str, Any]:
    return request.model_dump(exclude_unset=True, exclude={"question"})


async def _backend() -> _Direct | _Http:
    if api_settings() is not None:
        return _Http(ApiClient.from_env())
    from client.cli import _connect_temporal  # The CLI's own connection: embedded server and all.

    return _Direct(await _connect_temporal())


async def cmd_schedule(args: argparse.Namespace) -> int:
    from client.cli import _emit

    if args.action == "create":
        try:
            request = ScheduleRequest.model_validate(
                {"question": args.question, "cron": args.cron, "time_zone": args.tz, "overlap": args.overlap}
                | _options(args)
            )
        except ValidationError as err:
            raise CairnError(f"invalid schedule: {explain(err)}", "invalid") from None
        view = await (await _backend()).create(request)
        _emit(args, view, f"Scheduled {view.id}\n" + _render(view))
        return 0
    backend = await _backend()
    if args.action == "list":
        views = await backend.list()
        _emit(
            args,
            {"schedules": [v.model_dump(mode="json") for v in views]},
            "\n".join(map(_render, views)) or "No schedules.",
        )
        return 0
    body: dict[str, Any] = {}
    if args.action in ("pause", "unpause") and args.note:
        body["note"] = args.note
    if args.action == "backfill":
        body = {"start": args.start.isoformat(), "end": args.end.isoformat(), "overlap": args.overlap}
    answer = await backend.act(args.action, args.id, body)
    if answer is not None:
        _emit(args, answer, _render(answer))
    else:
        done = {"trigger": "Triggered", "delete": "Deleted"}[args.action]
        _emit(args, {"id": args.id, "done": args.action}, f"{done} {args.id}")
    return 0


async def cmd_library(args: argparse.Namespace) -> int:
    """What a run's researcher would find in the tenant's library for a query."""
    from client.cli import _emit

    settings = api_settings()
    if settings is not None:
        api = ApiClient.from_env()
        answer = await api.request("GET", "/v1/library/search", params={"q": args.query, "limit": args.limit})
        results = CorpusResults.model_validate(answer)
    else:
        from activities.corpus import open_corpus

        corpus = open_corpus()
        try:
            passages = await corpus.search(args.query, limit=args.limit, scope=library_scope(DEFAULT_TENANT))
        finally:
            await corpus.close()
        results = CorpusResults(query=args.query, passages=passages)
    lines = [
        f"{rank}. {p.title} ({p.path}, passage {p.position})\n   {' '.join(p.text.split())[:300]}"
        for rank, p in enumerate(results.passages, 1)
    ]
    _emit(args, results, "\n".join(lines) or f"Nothing in the library matches {args.query!r}.")
    return 0


async def cmd_followup(args: argparse.Namespace) -> int:
    from client.cli import _emit

    validated_workflow_id(args.id)
    options = _options(args)
    validated_input(args.question, **options)  # Refuse bad input before anything starts.
    request = RunRequest(question=args.question, **options)
    run_id = await (await _backend()).followup(args.id, request)
    _emit(
        args,
        {"workflow_id": run_id, "follows": args.id},
        f"Started {run_id}, following up {args.id}\n  cairn status {run_id}",
    )
    return 0


def _time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from None


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--auto-approve", action="store_true", help="approve every plan version")
    for flag, name, kind, help_text in RUN_OPTIONS:
        parser.add_argument(flag, dest=name, type=kind, help=help_text)
    parser.add_argument("--on-approval-timeout", dest="on_approval_timeout", choices=["approve", "abort"])
    parser.add_argument("--on-budget", dest="on_budget", choices=["pause", "finish"])
    parser.add_argument(
        "--library",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="search the tenant's library of earlier runs too (default: yes)",
    )


def add_living_commands(commands: Any) -> None:
    schedule = commands.add_parser("schedule", help="run a question on a schedule (Temporal Schedules)")
    actions = schedule.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(handler=cmd_schedule)
        return sub

    create = action("create", "schedule a research question")
    create.add_argument("question")
    create.add_argument("--cron", required=True, help="when, e.g. '0 8 * * 1' (Mondays at 08:00)")
    create.add_argument("--tz", default="UTC", help="IANA time zone of the cron (default UTC)")
    create.add_argument(
        "--overlap", choices=list(OVERLAPS), default="skip", help="when a run still goes as the next is due"
    )
    _run_options(create)
    action("list", "the schedules")
    for name, help_text in (
        ("describe", "a schedule, its next times and the runs it started"),
        ("pause", "stop starting runs"),
        ("unpause", "start runs again"),
        ("trigger", "a run now (skipped if one still runs, by default)"),
        ("delete", "remove the schedule (its runs stay)"),
        ("backfill", "runs for the times between --start and --end"),
    ):
        sub = action(name, help_text)
        sub.add_argument("id")
        if name in ("pause", "unpause"):
            sub.add_argument("--note", default="")
        if name == "backfill":
            sub.add_argument("--start", type=_time, required=True, help="ISO 8601")
            sub.add_argument("--end", type=_time, required=True, help="ISO 8601")
            sub.add_argument("--overlap", choices=list(OVERLAPS), default="buffer_all")
    library = commands.add_parser("library", help="the sources and findings of finished runs")
    shelves = library.add_subparsers(dest="action", required=True)
    search = shelves.add_parser("search", help="what a run would find in the library")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=5, choices=range(1, 21), metavar="1-20")
    search.add_argument("--json", action="store_true", help="machine-readable output")
    search.set_defaults(handler=cmd_library)
    followup = commands.add_parser("followup", help="a new run that builds on a finished one")
    followup.add_argument("id", help="the finished run")
    followup.add_argument("question")
    followup.add_argument("--json", action="store_true", help="machine-readable output")
    followup.set_defaults(handler=cmd_followup)
    _run_options(followup)

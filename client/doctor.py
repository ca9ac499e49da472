"""`cairn doctor [--json]`: is every part of this Cairn stack there and working, and if not, what fixes it.

Why this exists: a run needs a Temporal server with Cairn's search attributes, a worker polling both task
queues, an LLM server that knows each role's model and can give JSON and tool calls, a Docker engine with
the sandbox image, the search backends, a writable data store, and the renderers of report exports. When one is missing a run fails late,
or waits for ever; this finds it first and says, in one line, which variable or command fixes it.

Each check is `ok`, `warn` (Cairn runs, with something missing) or `fail` (runs will fail or wait); all
run at once, each within a few seconds, so a healthy stack answers in well under 10 s and compose can use
the command as a health check. Exit 0 when nothing fails, 1 otherwise.

Must never: start anything (it only looks: no embedded server, no worker, no container), or print a key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"
CHECK_SECONDS = 8.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


async def _bounded(name: str, probe: Awaitable[list[Check]]) -> list[Check]:
    """A probe with a time limit; one that hangs or breaks is a failed check, never a hung doctor."""
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await probe
    except TimeoutError:
        return [Check(name, FAIL, f"no answer within {CHECK_SECONDS:g} s")]
    except Exception as err:  # A probe's own bug still reports, by name, instead of hiding the rest.
        return [Check(name, FAIL, f"{type(err).__name__}: {err}")]


# -- Temporal and the workers ---------------------------------------------------------------------------


async def check_temporal(env: dict[str, str]) -> list[Check]:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
    from temporalio.client import Client

    from client.embedded import port_open
    from common.config import TemporalConfig
    from common.names import CAIRN_SEARCH_ATTRIBUTES, llm_task_queue

    config = TemporalConfig.from_env(env)
    fix_server = (
        "set TEMPORAL_ADDRESS to your server"
        if config.explicit
        else "run `cairn dev` (or set TEMPORAL_ADDRESS)"
    )
    host, _, port = config.address.rpartition(":")
    if not config.explicit and not port_open(int(port), host):
        return [Check("temporal", FAIL, f"no Temporal server answers at {config.address}", fix_server)]
    try:
        client = await Client.connect(**config.connect)  # type: ignore[arg-type]
    except Exception as err:
        return [Check("temporal", FAIL, f"cannot connect to {config.address}: {err}", fix_server)]
    namespace = config.namespace
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))
    except Exception as err:
        return [
            Check(
                "temporal",
                FAIL,
                f"{config.address} answers but namespace {namespace!r} is missing: {err}",
                f"temporal operator namespace create --namespace {namespace} (or set TEMPORAL_NAMESPACE)",
            )
        ]
    checks = [Check("temporal", OK, f"{config.address}, namespace {namespace}")]
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        missing = sorted(set(CAIRN_SEARCH_ATTRIBUTES) - set(listed.custom_attributes))
    except Exception as err:
        missing, detail = [], f"cannot list them ({err})"
        checks.append(Check("search attributes", WARN, detail, "grant the operator API, or ignore"))
    else:
        if missing:
            checks.append(
                Check(
                    "search attributes",
                    WARN,
                    f"{', '.join(missing)} not registered: runs work, but cannot be filtered by them",
                    " && ".join(
                        f"temporal operator search-attribute create --name {m} --type Keyword"
                        for m in missing
                    ),
                )
            )
        else:
            checks.append(Check("search attributes", OK, ", ".join(CAIRN_SEARCH_ATTRIBUTES)))
    for queue, kind, what in (
        (config.task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, "workflows"),
        (llm_task_queue(config.task_queue), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, "LLM calls"),
    ):
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
            )
        )
        pollers = len(described.pollers)
        if pollers:
            checks.append(Check(f"worker ({queue})", OK, f"{pollers} poller(s) for {what}"))
        else:
            checks.append(
                Check(
                    f"worker ({queue})",
                    FAIL,
                    f"no worker polls task queue {queue!r}: runs would wait for ever",
                    "start one: `python -m worker` with the same TEMPORAL_ADDRESS and CAIRN_TASK_QUEUE (or `cairn dev`)",
                )
            )
    return checks


# -- the LLM server -----------------------------------------------------------------------------------------

_PROBE_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
_PING_TOOL = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Answer a ping.",
        "parameters": {"type": "object", "properties": {}, "required": []},
    },
}


def _model_variable(roles: list[str]) -> str:
    names = [f"CAIRN_{r.upper()}_MODEL" for r in roles]
    return " or ".join(["CAIRN_MODEL", *names]) if len(names) > 1 else f"{names[0]} (or CAIRN_MODEL)"


async def check_llm(env: dict[str, str]) -> list[Check]:
    import openai

    from activities.llm import STRUCTURED_LADDER, format_instruction, refuses_response_format
    from common.config import ROLES, ConfigError, LLMConfig
    from common.models import StructuredOutput

    try:
        config = LLMConfig.from_env(env)
        config.require()
    except ConfigError as err:
        return [
            Check(
                "llm",
                FAIL,
                str(err),
                "set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any compatible server)",
            )
        ]
    server = config.base_url or "OpenAI"
    client = openai.AsyncOpenAI(
        api_key=config.api_key or "not-needed",
        base_url=config.base_url,
        max_retries=0,
        timeout=CHECK_SECONDS - 1,
    )
    by_model: dict[str, list[str]] = {}
    for role in ROLES:
        by_model.setdefault(config.model_for(role), []).append(role)

    async def ask(model: str, **extra: Any) -> Any:
        messages = extra.pop("messages", [{"role": "user", "content": "Reply with the word OK."}])
        return await client.chat.completions.create(model=model, messages=messages, **extra)

    async def probe(model: str, roles: list[str]) -> list[Check]:
        name = f"llm model {model}"
        try:
            await ask(model)
        except openai.APIConnectionError as err:
            return [
                Check(name, FAIL, f"cannot reach the LLM server at {server}: {err}", "fix OPENAI_BASE_URL")
            ]
        except openai.AuthenticationError:
            return [Check(name, FAIL, f"{server} refuses the credentials (401)", "fix OPENAI_API_KEY")]
        except openai.NotFoundError:
            return [
                Check(
                    name,
                    FAIL,
                    f"{server} does not know model {model!r} (404)",
                    f"fix {_model_variable(roles)}",
                )
            ]
        except openai.APIStatusError as err:
            return [
                Check(
                    name, FAIL, f"{server} answered {err.status_code}: {err.message}", "fix OPENAI_BASE_URL"
                )
            ]
        checks = [Check(name, OK, f"answers at {server} (for {', '.join(roles)})")]
        if {"planner", "researcher"} & set(roles):  # The roles whose calls expect JSON.
            mode = await _structured_mode(model, config.structured_output)
            checks.append(mode)
        if "researcher" in roles:
            checks.append(await _tools(model))
        return checks

    async def _structured_mode(model: str, configured: str) -> Check:
        name = f"llm model {model}: JSON"
        output = StructuredOutput(name="probe", json_schema=_PROBE_SCHEMA)
        ladder = STRUCTURED_LADDER if configured == "auto" else (configured,)
        last = ""
        for mode in ladder:
            extra: dict[str, Any] = {}
            messages = [{"role": "user", "content": "Is the sky blue?"}]
            if mode == "json_schema":
                extra["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "probe", "schema": _PROBE_SCHEMA, "strict": True},
                }
            else:
                messages = [{"role": "system", "content": format_instruction(output)}, *messages]
                if mode == "json_object":
                    extra["response_format"] = {"type": "json_object"}
            try:
                await ask(model, messages=messages, **extra)
            except openai.APIStatusError as err:
                if refuses_response_format(err):
                    last = err.message
                    continue
                return Check(name, FAIL, f"{err.status_code}: {err.message}", "fix CAIRN_STRUCTURED_OUTPUT")
            status = OK if mode == "json_schema" else WARN
            note = "" if mode == "json_schema" else f" (refuses stronger modes: {last[:120]})"
            return Check(name, status, f"structured output by {mode}{note}")
        return Check(
            name,
            FAIL,
            f"refuses the configured mode {configured}: {last[:200]}",
            "set CAIRN_STRUCTURED_OUTPUT=auto",
        )

    async def _tools(model: str) -> Check:
        name = f"llm model {model}: tools"
        try:
            reply = await ask(
                model,
                messages=[{"role": "user", "content": "Call the ping tool."}],
                tools=[_PING_TOOL],
            )
        except openai.APIStatusError as err:
            return Check(
                name,
                FAIL,
                f"refuses tool calling ({err.status_code}: {err.message[:200]}); the researcher needs it",
                "set CAIRN_RESEARCHER_MODEL to a model with tool calling",
            )
        called = bool(reply.choices and reply.choices[0].message.tool_calls)
        return Check(name, OK, "calls tools" if called else "accepts tools (did not call the probe's)")

    try:
        results = await asyncio.gather(*(probe(m, r) for m, r in by_model.items()))
    finally:
        await client.close()
    return [c for group in results for c in group]


# -- the sandbox, search and storage --------------------------------------------------------------------


async def check_sandbox(env: dict[str, str]) -> list[Check]:
    import docker
    import docker.errors

    from activities.sandbox.config import SandboxConfig

    image = SandboxConfig.from_env(env).image

    def look() -> Check:
        try:
            engine = docker.from_env(timeout=int(CHECK_SECONDS) - 2)
            engine.ping()
        except docker.errors.DockerException as err:
            return Check(
                "sandbox",
                FAIL,
                f"no Docker engine answers ({err}); code steps would fail",
                "start it (`bash sandbox_images/engine.sh`), or set DOCKER_HOST",
            )
        try:
            engine.images.get(image)
        except docker.errors.ImageNotFound:
            return Check(
                "sandbox", FAIL, f"the engine answers but image {image} is missing", "cairn sandbox build"
            )
        finally:
            engine.close()
        return Check("sandbox", OK, f"Docker engine answers; image {image} present")

    return [await asyncio.to_thread(look)]


async def check_search(env: dict[str, str]) -> list[Check]:
    from temporalio.exceptions import ApplicationError

    from activities.web_search import NAMES, WebSearch
    from common.web_config import SearchConfig

    config = SearchConfig.from_env(env)
    if not config.backends:
        return [
            Check(
                "search",
                WARN,
                "no web search backend configured: the researcher works from your documents alone",
                "set TAVILY_API_KEY, CAIRN_SEARXNG_URL or CAIRN_DDG=1",
            )
        ]
    search = WebSearch(config)
    variables = {"tavily": "TAVILY_API_KEY", "searxng": "CAIRN_SEARXNG_URL", "duckduckgo": "CAIRN_DDG_PROXY"}

    async def one(backend: str) -> Check:
        name = f"search {NAMES[backend]}"
        try:
            found = await search.search("temporal workflow", max_results=1, backend=backend)
        except ApplicationError as err:
            return Check(name, FAIL, f"{err.type}: {err.message}", f"fix {variables[backend]}")
        return Check(name, OK, f"answers ({len(found.hits)} hit(s) for a test query)")

    return list(await asyncio.gather(*(one(b) for b in config.backends)))


async def check_storage(env: dict[str, str]) -> list[Check]:
    from temporalio.api.common.v1 import Payload
    from temporalio.converter import StorageDriverRetrieveContext, StorageDriverStoreContext

    from common.config import cairn_home
    from common.payload_store import external_storage

    checks: list[Check] = []
    home = cairn_home(env)
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".doctor-{uuid.uuid4().hex[:8]}"
        probe.write_text("ok")
        probe.unlink()
        checks.append(Check("data directory", OK, f"{home} is writable"))
    except OSError as err:
        checks.append(
            Check("data directory", FAIL, f"{home} is not writable: {err.strerror or err}", "fix CAIRN_HOME")
        )
    driver = external_storage(env).drivers[0]
    where = "PostgreSQL (DATABASE_URL)" if env.get("DATABASE_URL") else "files"
    variable = "DATABASE_URL" if env.get("DATABASE_URL") else "CAIRN_PAYLOAD_DIR or CAIRN_HOME"
    payload = Payload(metadata={"encoding": b"binary/plain"}, data=f"cairn doctor {time.time()}".encode())
    try:
        claims = await driver.store(StorageDriverStoreContext(), [payload])
        back = await driver.retrieve(StorageDriverRetrieveContext(), claims)
    except Exception as err:
        checks.append(
            Check("payload store", FAIL, f"{where}: {type(err).__name__}: {err}", f"fix {variable}")
        )
        return checks
    if back != [payload]:
        checks.append(
            Check("payload store", FAIL, f"{where}: a payload came back changed", f"fix {variable}")
        )
    else:
        checks.append(Check("payload store", OK, f"{where}: a payload round-trips"))
    return checks


async def check_export(env: dict[str, str]) -> list[Check]:
    """Report export: a one-line report with a citation rendered to PDF (WeasyPrint on Pango) and to
    DOCX (pandoc), as `cairn report --format` and the API would."""
    from client.web.export import ExportUnavailable, export_report
    from common.models import ResearchResult, Source

    probe = ResearchResult(
        workflow_id="doctor",
        question="doctor",
        report="# Doctor\n\nA cited line [1].\n",
        sources=[Source(id="1", title="A source", url="https://example.org/")],
    )

    async def no_artifacts(name: str) -> bytes | None:
        return None

    async def one(fmt: str, fix: str) -> Check:
        name = f"report export: {fmt.upper()}"
        try:
            data = await export_report(probe, fmt, no_artifacts)  # type: ignore[arg-type]
        except ExportUnavailable as err:
            return Check(name, FAIL, str(err), fix)
        except Exception as err:
            return Check(name, FAIL, f"{type(err).__name__}: {str(err)[:300]}", fix)
        return Check(name, OK, f"a test report renders ({len(data):,} bytes)")

    return [
        await one("pdf", "./install.sh (Debian's libpango-1.0-0, libpangoft2-1.0-0, fonts-dejavu-core)"),
        await one("docx", "pip install -r requirements.lock (pypandoc-binary ships pandoc)"),
    ]


async def check_mcp(env: dict[str, str]) -> list[Check]:
    """Each MCP server of CAIRN_MCP_CONFIG: whether it answers, and its tools."""
    from temporalio.exceptions import ApplicationError

    from activities.mcp_tools import McpTools
    from common.mcp_config import McpConfig

    try:
        config = McpConfig.from_env(env)
    except ValueError as err:
        return [Check("MCP config", FAIL, str(err), "fix the file CAIRN_MCP_CONFIG names")]
    if not config.servers:
        return []
    tools = McpTools(config, env)

    async def one(server: Any) -> Check:
        name = f"MCP {server.name}"
        try:
            found = await tools.list_server(server)
        except ApplicationError as err:
            return Check(
                name, FAIL, err.message, f"start it, or fix [servers.{server.name}] in CAIRN_MCP_CONFIG"
            )
        listed = ", ".join(sorted(t.name for t in found)) or "none"
        return Check(name, OK, f"{server.transport}, answers; tools: {listed}")

    return list(await asyncio.gather(*(one(s) for s in config.servers)))


CHECKS: dict[str, Callable[[dict[str, str]], Awaitable[list[Check]]]] = {
    "temporal": check_temporal,
    "llm": check_llm,
    "sandbox": check_sandbox,
    "search": check_search,
    "storage": check_storage,
    "export": check_export,
    "mcp": check_mcp,
}


async def diagnose(env: dict[str, str] | None = None, only: list[str] | None = None) -> list[Check]:
    env = dict(os.environ if env is None else env)
    chosen = {name: probe for name, probe in CHECKS.items() if not only or name in only}
    groups = await asyncio.gather(*(_bounded(name, probe(env)) for name, probe in chosen.items()))
    return [check for group in groups for check in group]


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status.upper():<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    failed = sum(c.status == FAIL for c in checks)
    lines.append("All good." if not failed else f"{failed} check(s) failed.")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    only = [name.strip() for name in (args.only or "").split(",") if name.strip()]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        print(
            f"cairn doctor: unknown check {', '.join(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr
        )
        return 2
    checks = await diagnose(only=only)
    if args.json:
        failed = any(c.status == FAIL for c in checks)
        seconds = round(time.monotonic() - started, 2)
        print(
            json.dumps(
                {"ok": not failed, "seconds": seconds, "checks": [asdict(c) for c in checks]}, indent=2
            )
        )
    else:
        print(render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


def add_doctor_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    doctor = subparsers.add_parser(
        "doctor", help="check every part of the stack and name the fix for what fails"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument(
        "--only", metavar="CHECKS", help=f"comma-separated checks to run (default all: {','.join(CHECKS)})"
    )
    doctor.set_defaults(handler=run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m client.doctor")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only")
    sys.exit(asyncio.run(run(parser.parse_args())))

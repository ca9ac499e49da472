"""The operator's MCP servers as durable tools, against real MCP servers (testkit/mcp_server.py, the
official SDK) started on loopback: one over streamable HTTP with a bearer token from the environment,
one over stdio. Discovery, names that cannot collide, each call its own `researcher.mcp` activity, a
tool's error as a typed tool error, a server that dies mid-call (the call is retried), a slow one
(heartbeats, cancelled when its step is skipped), tenants, the config file's checks and `cairn doctor`."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.mcp_tools import McpTools
from client.api import CairnClient
from common import errors
from common.mcp_config import McpConfig, split_name
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import CAIRN, cli_env, llm_config
from tests.helpers import events_of, history, run, scheduled_activities
from worker import build_worker

TOKEN_ENV = "CAIRN_TEST_MCP_TOKEN"
TOKEN = "mcp-sentinel-token-5b1e"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The HTTP server running, and the TOML naming it and the stdio server; the shared log file."""
    tmp = tmp_path_factory.mktemp("mcp")
    log = tmp / "calls.log"
    log.touch()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.mcp_server", "--http", str(port), "--log", str(log)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the MCP test server did not start") from None
            time.sleep(0.1)
    config = f"""
[servers.calc-http]
url = "http://127.0.0.1:{port}/mcp"
headers = {{ "X-Team" = "research" }}
bearer_token_env = "{TOKEN_ENV}"

[servers.calc-stdio]
command = [{json.dumps(sys.executable)}, "-m", "testkit.mcp_server", "--log", {json.dumps(str(log))}]
timeout_seconds = 120

[servers.acme-only]
command = [{json.dumps(sys.executable)}, "-m", "testkit.mcp_server", "--log", {json.dumps(str(log))}]
tenants = ["acme"]
"""
    try:
        yield config, log
    finally:
        process.terminate()
        process.wait(10)


def tools_of(config: str) -> McpTools:
    return McpTools(McpConfig.parse(tomllib.loads(config)), {TOKEN_ENV: TOKEN})


def test_only_the_operators_file_names_servers_and_it_is_checked() -> None:
    for bad, reason in [
        ('[servers.x]\nurl = "http://a/mcp"\ncommand = ["a"]', "exactly one of url"),
        ("[servers.x]\ntimeout_seconds = 5", "exactly one of url"),
        ('[servers.x]\ncommand = "python server.py"', "valid tuple"),  # never a shell string
        ('[servers.X_1]\ncommand = ["a"]', "server name"),
        ('[servers.x]\ncommand = ["a"]\nshell = true', "Extra inputs"),
        ('[servers.x]\nurl = "file:///etc/passwd"', "not an http"),
        ('[servers.x]\ncommand = ["a"]\nbearer_token_env = "T"', "for url servers"),
        ('[server.x]\ncommand = ["a"]', "unknown section"),
    ]:
        with pytest.raises(ValueError, match=reason):
            McpConfig.parse(tomllib.loads(bad))
    assert split_name("mcp__calc__add") == ("calc", "add") and split_name("web_search") is None


async def test_discovery_over_both_transports_with_the_servers_schemas(servers: tuple[str, Path]) -> None:
    config, log = servers
    mcp = tools_of(config)
    found = {t.exposed: t for t in await mcp.tools_for("default")}
    for server in ("calc-http", "calc-stdio"):
        add = found[f"mcp__{server}__add"]
        assert add.description == "Add two integers."
        assert add.schema["properties"]["a"]["type"] == "integer" and add.schema["required"] == ["a", "b"]
        assert add.spec()["function"]["description"].startswith(f"[MCP server {server}]")
    assert not any(name.startswith("mcp__acme-only__") for name in found)  # Not this tenant's.
    assert any(
        name.startswith("mcp__acme-only__") for name in {t.exposed for t in await mcp.tools_for("acme")}
    )
    assert await mcp.call("mcp__calc-http__add", {"a": 2, "b": 40}, "default") == "42"
    assert f"authorization Bearer {TOKEN}" in log.read_text()  # From the worker's environment.
    with pytest.raises(ApplicationError) as refused:
        await mcp.call("mcp__acme-only__add", {"a": 1, "b": 1}, "default")
    assert refused.value.type == errors.MCP_UNKNOWN_TOOL and refused.value.non_retryable
    with pytest.raises(ApplicationError) as failed:
        await mcp.call("mcp__calc-stdio__fail", {}, "default")
    assert failed.value.type == errors.MCP_TOOL_ERROR and failed.value.non_retryable
    without_token = McpTools(McpConfig.parse(tomllib.loads(config)), {})
    with pytest.raises(ApplicationError, match=f"{TOKEN_ENV} is not set"):
        await without_token.call("mcp__calc-http__add", {"a": 1, "b": 1}, "default")


async def test_each_call_is_an_activity_and_a_tool_error_reaches_the_model_typed(
    temporal_client: Client,
    llm: ScriptedLLM,
    task_queue: str,
    tmp_path: Path,
    servers: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, _ = servers
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # The worker reads the token from its environment.
    async with build_worker(
        temporal_client,
        task_queue,
        llm_config(llm),
        home=tmp_path,
        mcp=McpConfig.parse(tomllib.loads(config)),
    ):
        cairn = CairnClient(temporal_client, task_queue)
        question = (
            'Tools [steps=1] [mcp=mcp__calc-http__add {"a": 19, "b": 23}] [mcp=mcp__calc-stdio__fail {}]'
        )
        wid = await cairn.start(question, auto_approve=True, max_plan_iterations=0, clarify="never")
        result = await cairn.result(wid)
    assert not result.aborted
    turns = [r for r in llm.requests if r.role == "researcher"]
    assert {"mcp__calc-http__add", "mcp__calc-stdio__fail"} <= set(turns[0].tools)
    said = "\n".join(str(m.get("content")) for m in turns[1].messages)
    assert "mcp__calc-http__add answered:\n\n42" in said
    assert errors.MCP_TOOL_ERROR in said and "fail of calc-stdio failed" in said
    step = await history(cairn, f"{wid}/s1")
    assert scheduled_activities(step).count("researcher.mcp") == 2
    assert TOKEN not in json.dumps(step.to_json_dict())  # The token never enters history.


async def test_a_server_that_dies_mid_call_is_retried_and_a_slow_one_is_cancelled_on_skip(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path, servers: tuple[str, Path]
) -> None:
    config, log = servers
    mcp = McpConfig.parse(tomllib.loads(config))
    async with build_worker(temporal_client, task_queue, llm_config(llm), home=tmp_path, mcp=mcp):
        cairn = CairnClient(temporal_client, task_queue)
        crash = 'Crash [steps=1] [mcp=mcp__calc-stdio__crash_once {"key": "k1"}]'
        wid = await cairn.start(crash, auto_approve=True, max_plan_iterations=0, clarify="never")
        await cairn.result(wid)
        step = await history(cairn, f"{wid}/s1")
        (call,) = [
            e.event_id
            for e in events_of(step, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
            if e.activity_task_scheduled_event_attributes.activity_type.name == "researcher.mcp"
        ]
        (attempts,) = [
            e.activity_task_started_event_attributes.attempt
            for e in events_of(step, EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
            if e.activity_task_started_event_attributes.scheduled_event_id == call
        ]
        assert attempts == 2  # The first attempt's server died; the retry's answered.
        assert "crash k1" in log.read_text() and "survived k1" in log.read_text()
        said = "\n".join(
            str(m.get("content")) for r in llm.requests if r.role == "researcher" for m in r.messages
        )
        assert "survived k1" in said

        slow = 'Slow [steps=1] [mcp=mcp__calc-stdio__slow {"seconds": 120}]'
        wid = await cairn.start(slow, auto_approve=True, max_plan_iterations=0, clarify="never")
        for _ in range(300):
            if "start slow 120" in log.read_text():
                break
            await asyncio.sleep(0.1)
        began = time.monotonic()
        await cairn.skip_step(wid, "s1")
        result = await cairn.result(wid)
        assert time.monotonic() - began < 30  # Told by heartbeat, not after the tool's two minutes.
    assert result.plan is not None and result.plan.steps[0].status == "skipped"
    step = await history(cairn, f"{wid}/s1")
    assert events_of(step, EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
    assert "end slow" not in log.read_text()


async def test_doctor_lists_each_server_whether_it_answers_and_its_tools(
    servers: tuple[str, Path], tmp_path: Path
) -> None:
    config, _ = servers
    broken = config + '\n[servers.gone]\nurl = "http://127.0.0.1:9/mcp"\n'
    (tmp_path / "mcp.toml").write_text(broken)
    env = cli_env(CAIRN_MCP_CONFIG=str(tmp_path / "mcp.toml"), CAIRN_HOME=str(tmp_path), **{TOKEN_ENV: TOKEN})
    code, out, _ = await run(CAIRN, "doctor", "--only", "mcp", "--json", env=env, check=False)
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert (
        checks["MCP calc-http"]["status"] == "ok"
        and "add, crash_once, fail, slow" in checks["MCP calc-http"]["detail"]
    )
    assert checks["MCP calc-stdio"]["status"] == "ok"
    assert checks["MCP gone"]["status"] == "fail" and code == 1
    assert TOKEN not in out

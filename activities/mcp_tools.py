"""The operator's MCP servers as the researcher's tools: discovery, and one call (the `researcher.mcp` node).

Why this exists: a server listed in CAIRN_MCP_CONFIG (common/mcp_config.py) offers tools the researcher
may use, with the schemas and descriptions the server gives them. Sessions are opened here, on the
worker, with the official `mcp` SDK (its `Client` over streamable HTTP or stdio): one session to list a
server's tools (cached for a minute), one session per call, so a call that a dead worker or a dead
server interrupted is retried by Temporal on a fresh one. Keys (a bearer token from the worker's
environment) live in this object and never enter history.

Errors, as everywhere in the researcher: a server that cannot be reached, a session that breaks (a
process that dies mid-call) or a call over its time is retryable `McpUnavailable`; a tool that answers
with `isError` is non-retryable `McpToolError`, which the model reads as a typed tool error; a name
that is no configured server's tool for this tenant is non-retryable `McpUnknownTool`.

Must never: start a command or reach a URL the operator's file does not name, hand a stdio server the
worker's environment (it gets the SDK's minimal default: PATH, HOME and the like), or offer a tenant a
server the file does not enable for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from temporalio.exceptions import ApplicationError

from common import errors
from common.mcp_config import McpConfig, McpServer, exposed_name, split_name

if TYPE_CHECKING:
    from mcp import Client

log = logging.getLogger("cairn.mcp")

LIST_SECONDS: Final = 10.0  # listing a server's tools, which every researcher turn may need
CACHE_SECONDS: Final = 60.0
MAX_RESULT_CHARS: Final = 200_000  # a tool's text beyond this is cut, and the model told
MAX_DESCRIPTION_CHARS: Final = 1000


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str  # as the server names it
    exposed: str  # as the model calls it: mcp__<server>__<name>
    description: str
    schema: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """The tool as an OpenAI function, its description saying whose it is."""
        schema = self.schema if self.schema.get("type") == "object" else {"type": "object", "properties": {}}
        return {
            "type": "function",
            "function": {
                "name": self.exposed,
                "description": f"[MCP server {self.server}] {self.description}"[:MAX_DESCRIPTION_CHARS],
                "parameters": schema,
            },
        }


class McpTools:
    """Built once per worker from the operator's file (worker.py)."""

    def __init__(self, config: McpConfig, env: Mapping[str, str] | None = None) -> None:
        self._config = config
        self._env = dict(os.environ if env is None else env)
        self._cache: dict[str, tuple[float, list[McpTool]]] = {}

    @property
    def config(self) -> McpConfig:
        return self._config

    @asynccontextmanager
    async def _session(self, server: McpServer) -> AsyncIterator[Client]:
        # The SDK takes half a second to import: only a worker with servers configured pays it, and
        # only when it first talks to one (a worker must poll within seconds of starting).
        import httpx2
        from mcp import Client, StdioServerParameters
        from mcp.client.streamable_http import streamable_http_client

        if server.command is not None:
            params = StdioServerParameters(command=server.command[0], args=list(server.command[1:]))
            async with Client(params, read_timeout_seconds=server.timeout_seconds) as client:
                yield client
            return
        assert server.url is not None
        headers = dict(server.headers)
        if server.bearer_token_env:
            token = self._env.get(server.bearer_token_env)
            if not token:
                raise ApplicationError(
                    f"MCP server {server.name}: {server.bearer_token_env} is not set on this worker",
                    type=errors.MCP_UNAVAILABLE,
                    non_retryable=True,
                )
            headers["Authorization"] = f"Bearer {token}"
        async with (
            httpx2.AsyncClient(headers=headers, timeout=server.timeout_seconds) as http,
            Client(
                streamable_http_client(server.url, http_client=http),
                read_timeout_seconds=server.timeout_seconds,
            ) as client,
        ):
            yield client

    async def list_server(self, server: McpServer) -> list[McpTool]:
        """The server's tools, asked anew (an McpUnavailable ApplicationError when it does not answer)."""
        try:
            async with asyncio.timeout(LIST_SECONDS):
                async with self._session(server) as client:
                    listed = await client.list_tools()
        except ApplicationError:
            raise
        except Exception as err:
            raise _unavailable(server, "listing its tools", err) from err
        tools = []
        for tool in listed.tools:
            exposed = exposed_name(server.name, tool.name)
            if exposed is None:
                log.warning(
                    "MCP server %s: tool %r has a name that cannot be offered", server.name, tool.name
                )
                continue
            schema = dict(getattr(tool, "input_schema", None) or {})
            tools.append(McpTool(server.name, tool.name, exposed, tool.description or tool.name, schema))
        return tools

    async def tools_for(self, tenant: str) -> list[McpTool]:
        """Every tool of the servers enabled for `tenant` that answer; a server that does not is left
        out of this turn (and logged), not a failed turn."""
        found: list[McpTool] = []
        for server in self._config.for_tenant(tenant):
            cached = self._cache.get(server.name)
            if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
                found += cached[1]
                continue
            try:
                tools = await self.list_server(server)
            except ApplicationError as err:
                log.warning("MCP server %s is left out of this turn: %s", server.name, err.message)
                continue
            self._cache[server.name] = (time.monotonic(), tools)
            found += tools
        return found

    async def call(self, exposed: str, arguments: dict[str, Any], tenant: str) -> str:
        """The text a tool answers with; ApplicationErrors as the module docstring says."""
        named = split_name(exposed)
        server = self._config.server(named[0]) if named else None
        if named is None or server is None or not server.serves(tenant):
            raise ApplicationError(
                f"there is no MCP tool {exposed!r} for this run",
                type=errors.MCP_UNKNOWN_TOOL,
                non_retryable=True,
            )
        tool = named[1]
        try:
            async with asyncio.timeout(server.timeout_seconds), self._session(server) as client:
                result = await client.call_tool(tool, arguments)
        except ApplicationError:
            raise
        except Exception as err:
            raise _unavailable(server, f"calling {tool}", err) from err
        text = "\n".join(_text_of(block) for block in result.content) or "(no content)"
        if result.is_error:
            raise ApplicationError(
                f"MCP tool {tool} of {server.name} failed: {text[:2000]}",
                type=errors.MCP_TOOL_ERROR,
                non_retryable=True,
            )
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"\n[... {len(text) - MAX_RESULT_CHARS} more characters cut]"
        return text


def _text_of(block: Any) -> str:
    text = getattr(block, "text", None)
    if isinstance(text, str):
        return text
    return f"[{getattr(block, 'type', 'content')} omitted]"


def _unavailable(server: McpServer, doing: str, err: BaseException) -> ApplicationError:
    if isinstance(err, TimeoutError):
        reason = f"no answer within {server.timeout_seconds:g} s"
    else:
        # An ExceptionGroup from the SDK's task group says little at its top: name the first leaf.
        leaf: BaseException = err
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        reason = f"{type(leaf).__name__}: {str(leaf)[:300]}"
    return ApplicationError(
        f"MCP server {server.name} ({server.transport}) failed while {doing}: {reason}",
        type=errors.MCP_UNAVAILABLE,
    )

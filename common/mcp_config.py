"""The MCP servers an operator allows, from the TOML file named by CAIRN_MCP_CONFIG (read on the worker).

Why this exists: MCP lets people bring their own tools, and a configuration endpoint that takes any
command line is a remote-code-execution hole. Here only the operator's file names servers: streamable
HTTP servers by URL (with fixed headers, and a bearer token read from an environment variable of the
worker, never written in the file or sent anywhere else) and stdio servers by command. No API caller
and nothing a model writes can add a server, a command or an argument.

    [servers.docs]                       # a name: 1-24 of a-z, 0-9 and -
    url = "https://mcp.example.org/mcp"  # streamable HTTP
    headers = { "X-Team" = "research" }
    bearer_token_env = "DOCS_MCP_TOKEN"  # Authorization: Bearer $DOCS_MCP_TOKEN
    tenants = ["acme"]                   # only these tenants' runs; leave out for every tenant

    [servers.calc]
    command = ["python", "-m", "calc_server"]   # stdio; the worker starts it for each call
    timeout_seconds = 60                        # one call at most (default 120)

A tool is offered to the researcher as `mcp__<server>__<tool>`, a name no built-in tool can have.

Must never: accept a server with both or neither of `url` and `command`, a command given as one shell
string (no shell ever runs it), or an unknown key (a typo would silently weaken the file).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PREFIX: Final = "mcp__"
_SERVER_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
# OpenAI function names: [a-zA-Z0-9_-]{1,64}; the exposed name must fit, prefix and server included.
_TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class McpServer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str | None = None
    command: tuple[str, ...] | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    bearer_token_env: str | None = None
    tenants: tuple[str, ...] | None = None  # None: every tenant
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if not _SERVER_NAME.match(self.name):
            raise ValueError(
                f"server name {self.name!r}: use 1-24 of a-z, 0-9 and -, starting with a letter or digit"
            )
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of url (streamable HTTP) and command (stdio)")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"url {self.url[:100]!r} is not an http(s) URL")
        if self.url is None and (self.headers or self.bearer_token_env):
            raise ValueError("headers and bearer_token_env are for url servers")
        return self

    @property
    def transport(self) -> str:
        return "streamable HTTP" if self.url else "stdio"

    def serves(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


class McpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: tuple[McpServer, ...] = ()

    def for_tenant(self, tenant: str) -> list[McpServer]:
        return [s for s in self.servers if s.serves(tenant)]

    def server(self, name: str) -> McpServer | None:
        return next((s for s in self.servers if s.name == name), None)

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "the MCP file") -> McpConfig:
        unknown = set(data) - {"servers"}
        if unknown:
            raise ValueError(f"{where}: unknown section(s) {sorted(unknown)}; use [servers.<name>]")
        servers = []
        for name, section in dict(data.get("servers", {})).items():
            try:
                servers.append(McpServer.model_validate({**dict(section), "name": name}))
            except (ValidationError, TypeError) as err:
                detail = (
                    "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())
                    if isinstance(err, ValidationError)
                    else str(err)
                )
                raise ValueError(f"{where} [servers.{name}]: {detail}") from None
        return cls(servers=tuple(servers))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> McpConfig:
        """The file named by CAIRN_MCP_CONFIG, or no servers; a ValueError naming the file and the
        section for a file that cannot be read or says something it may not."""
        env = os.environ if env is None else env
        name = env.get("CAIRN_MCP_CONFIG")
        if not name:
            return cls()
        try:
            data = tomllib.loads(Path(name).expanduser().read_text(encoding="utf-8"))
        except OSError as err:
            raise ValueError(f"CAIRN_MCP_CONFIG={name}: cannot read it ({err.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"CAIRN_MCP_CONFIG={name} is not TOML: {err}") from None
        return cls.parse(data, f"CAIRN_MCP_CONFIG={name}")


def exposed_name(server: str, tool: str) -> str | None:
    """The name the model calls a server's tool by, or None when it cannot be one (too long, odd
    characters): such a tool is not offered."""
    name = f"{PREFIX}{server}__{tool}"
    return name if _TOOL_NAME.match(name) else None


def split_name(name: str) -> tuple[str, str] | None:
    """(server, tool) of an exposed name, or None when `name` is not one."""
    if not name.startswith(PREFIX):
        return None
    server, sep, tool = name[len(PREFIX) :].partition("__")
    return (server, tool) if sep and server and tool else None

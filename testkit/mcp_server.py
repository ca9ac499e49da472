"""A real MCP server for tests, built with the official `mcp` SDK: over stdio (the default) or streamable
HTTP on loopback (`--http PORT`). Run as `python -m testkit.mcp_server [--http PORT] --log FILE`.

Tools: `add` (two integers), `fail` (always an error result), `slow` (sleeps, for heartbeats and
cancellation), `crash_once` (the process dies in the middle of the first call for a key, and answers
the next: a server that dies mid-call). Every call, and over HTTP every request's Authorization
header, is appended to the log file, so tests can see what the server saw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

server = MCPServer("cairn-test-tools")
LOG: Path | None = None


def _log(line: str) -> None:
    if LOG is not None:
        with LOG.open("a", encoding="utf-8") as out:
            out.write(line + "\n")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    _log(f"call add {a} {b}")
    return a + b


@server.tool()
def fail() -> str:
    """Always fails."""
    _log("call fail")
    raise ValueError("this tool always fails")


@server.tool()
async def slow(seconds: float) -> str:
    """Wait `seconds`, then say so."""
    _log(f"start slow {seconds}")
    await asyncio.sleep(seconds)
    _log("end slow")
    return f"waited {seconds} s"


@server.tool()
def crash_once(key: str) -> str:
    """Die in the middle of the first call for `key`; answer every later one."""
    assert LOG is not None
    marker = LOG.with_name(f"crashed-{key}")
    if not marker.exists():
        marker.write_text("1")
        _log(f"crash {key}")
        os._exit(3)  # The process dies mid-call, its answer never written.
    _log(f"survived {key}")
    return f"survived {key}"


def _recording(app: Any) -> Any:
    """The HTTP app, logging each request's Authorization header first."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            _log(f"authorization {headers.get(b'authorization', b'').decode()}")
        await app(scope, receive, send)

    return wrapped


def main() -> None:
    global LOG
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, help="serve streamable HTTP on 127.0.0.1:PORT")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    LOG = Path(args.log)
    if args.http:
        import uvicorn

        uvicorn.run(
            _recording(server.streamable_http_app()), host="127.0.0.1", port=args.http, log_level="warning"
        )
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()

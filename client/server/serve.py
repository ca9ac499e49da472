"""`cairn serve [--host 127.0.0.1] [--port 8000]`: the HTTP API on uvicorn.

Binds to loopback unless told otherwise; a public address gets a notice that TLS belongs in front (a
reverse proxy or load balancer). One process per invocation: run several behind a load balancer to
scale out; they share nothing but Temporal and the database. SIGTERM drains open requests for a few
seconds and closes event streams (their clients reconnect to another process with Last-Event-ID).

Must never: log a request's headers (they carry credentials) or the OIDC callback's query (a one-time
code), or start when the tenant search attribute is missing (client/server/app.py refuses; the message
says what to run).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def cmd_serve(args: argparse.Namespace) -> int:
    # Imported here: every other `cairn` command would pay for FastAPI's import otherwise.
    import uvicorn

    from client.server.app import ServerConfig, Services, create_app

    config = ServerConfig.from_env(host=args.host, port=args.port)
    if not _loopback(config.host):
        print(
            f"cairn serve: listening on {config.host}, beyond this machine: put TLS in front of it "
            "(a reverse proxy or load balancer), and keep Temporal's own port private",
            file=sys.stderr,
        )
    # Connected before uvicorn starts, so a missing search attribute or an unreachable Temporal is one
    # line on stderr and exit 1, not a traceback from the application's start-up.
    services = await Services.start(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, services),
            host=config.host,
            port=config.port,
            log_level="info",
            server_header=False,
            timeout_graceful_shutdown=5,
            # Behind a proxy on this machine, the client's address comes from X-Forwarded-For.
            forwarded_allow_ips="127.0.0.1",
        )
    )
    # After uvicorn.Config set its loggers up: the access log line of the web app's OIDC callback
    # would otherwise carry the provider's one-time code and state.
    logging.getLogger("uvicorn.access").addFilter(_redact_callback_query)
    await server.serve()
    return 0 if server.started else 1


def _redact_callback_query(record: logging.LogRecord) -> bool:
    """uvicorn's access record is (client, method, path with query, HTTP version, status)."""
    args = record.args
    if isinstance(args, tuple) and len(args) >= 3 and str(args[2]).startswith("/auth/callback?"):
        record.args = (*args[:2], "/auth/callback?(redacted)", *args[3:])
    return True


def add_serve_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="serve the multi-tenant HTTP API")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1, or CAIRN_API_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, or CAIRN_API_PORT)")
    serve.set_defaults(handler=cmd_serve)

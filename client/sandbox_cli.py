"""`cairn sandbox build` and `cairn sandbox exec FILE [--json] [--timeout S]`.

Why this exists: a person must be able to build the sandbox image and try a program in the sandbox
without a Temporal server, through exactly the code path the `sandbox.exec` activity uses (the same
SandboxRunner, limits and artifact handling). `build` is `python -m sandbox_images.build` under another
name: the same options and the same function. Runnable alone: `python -m client.sandbox_cli ...`.

Must never: run the program any other way than the activity does, or print an infrastructure failure
as if it were the program's result (those exit with code 2 and a message on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from temporalio.exceptions import ApplicationError

from common.sandbox_models import ExecRequest, ExecResult
from sandbox_images import build as image_build


async def run_file(code: str, name: str, timeout_seconds: float | None) -> ExecResult:
    from activities.sandbox.artifacts import CLI_DIRECTORY
    from activities.sandbox.config import SandboxConfig
    from activities.sandbox.runner import SandboxRunner

    config = SandboxConfig.from_env()
    # One run only: a warm pool would start containers this process never uses.
    runner = SandboxRunner(config, pool_size=0)
    try:
        req = ExecRequest(code=code, timeout_seconds=timeout_seconds, step=name)
        return await runner.run(req, artifacts_dir=config.artifacts_root / CLI_DIRECTORY / name)
    finally:
        await runner.close()


async def _build(args: argparse.Namespace) -> int:
    """The same build as `python -m sandbox_images.build` (install.sh runs that), off the event loop."""
    return await asyncio.to_thread(image_build.run, args)


async def _exec(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        code = await asyncio.to_thread(path.read_text)
        result = await run_file(code, path.stem, args.timeout)
    except ApplicationError as err:
        print(f"cairn sandbox exec: {err.type}: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"cairn sandbox exec: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        if result.stdout:
            sys.stdout.write(result.stdout if result.stdout.endswith("\n") else result.stdout + "\n")
        if result.stderr:
            sys.stderr.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
        print(f"[sandbox] {result.summary()}", file=sys.stderr)
    # The program's own exit code, as if it had run locally (capped to what a shell can show).
    return min(result.exit_code, 255)


def add_sandbox_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sandbox = subparsers.add_parser("sandbox", help="build the code sandbox image or run a file in it")
    _add_build_and_exec(sandbox.add_subparsers(dest="sandbox_command", required=True))


def _add_build_and_exec(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    # The same options and entry point as `python -m sandbox_images.build`, which install.sh runs.
    build = sub.add_parser("build", help="build the sandbox image offline (debootstrap + docker import)")
    image_build.add_arguments(build)
    build.set_defaults(handler=_build)

    exe = sub.add_parser("exec", help="run a Python file in the sandbox, as the sandbox.exec activity does")
    exe.add_argument("file", help="Python file to run; files it writes to /workspace/out come back")
    exe.add_argument("--json", action="store_true", help="print the full result as JSON")
    exe.add_argument("--timeout", type=float, default=None, help="wall-clock limit in seconds")
    exe.set_defaults(handler=_exec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.sandbox_cli")
    _add_build_and_exec(parser.add_subparsers(dest="sandbox_command", required=True))
    args = parser.parse_args(argv)
    return asyncio.run(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

"""Cairn installs from its own pyproject.toml: every import is declared, the wheel leaves test support out,
and a wheel installed into a fresh virtualenv with pyproject's dependencies alone (no lock) runs a worker
and a research against the scripted LLM."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tomllib
import uuid
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLMProcess
from tests.helpers import run

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SHIPPED = [
    *(name.rstrip("*") for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]),
    *PYPROJECT["tool"]["setuptools"]["py-modules"],
]


def shipped_files() -> list[Path]:
    files = []
    for name in SHIPPED:
        path = ROOT / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [ROOT / f"{name}.py"]
    return files


def imported_modules() -> set[str]:
    """Every module the shipped code imports by absolute name (top-level and inside functions); for
    `from a import b`, `a.b` too, which is a module when `a` is a namespace package."""
    names: set[str] = set()
    for path in shipped_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _origin(module: str) -> str | None:
    """The file a module is loaded from; None for a name that is not a module (a class imported with
    `from`) or for a namespace package, which no one distribution owns."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin not in (None, "built-in", "frozen") else None


def owning_distributions() -> dict[str, str]:
    """Installed file (relative to its site directory) -> the distribution that installed it."""
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or []:
            owners[str(file)] = canonicalize_name(dist.metadata["Name"])
    return owners


def test_pyproject_declares_every_distribution_the_code_imports() -> None:
    declared = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    owners = owning_distributions()
    local = {name.split(".")[0] for name in SHIPPED}
    missing: dict[str, str] = {}
    checked = 0
    for module in sorted(imported_modules()):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in local:
            continue
        origin = _origin(module)
        if origin is None:
            continue
        site = max((p for p in sys.path if p and origin.startswith(p.rstrip("/") + "/")), key=len)
        owner = owners.get(os.path.relpath(origin, site))
        assert owner is not None, f"no installed distribution owns {origin}"
        checked += 1
        if owner not in declared:
            missing[module] = owner
    assert checked > 20  # the walk found the code's imports
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def _copy_source(into: Path) -> Path:
    """The project as a fresh checkout has it (no virtualenv, caches or build output)."""
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache")
    source = into / "source"
    shutil.copytree(ROOT, source, ignore=ignore)
    return source


async def test_a_wheel_installed_without_the_lock_runs_a_research(
    dev_server: DevServer, tmp_path: Path
) -> None:
    source = _copy_source(tmp_path)
    dist = tmp_path / "dist"
    await run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source), seconds=300
    )
    wheel = next(dist.glob("cairn-*.whl"))
    shipped = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "testkit" not in shipped and "tests" not in shipped
    assert {"activities", "client", "common", "workflows", "sandbox_images", "worker.py"} <= shipped
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in (
        "activities/sandbox",
        "activities/corpus",
        "activities/researcher",
        "workflows/researcher",
        "client/web",
    ):
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    assert "sandbox_images/bootstrap.py" in names
    # The web app's templates and static files are package data, not code: they must ship too.
    assert {"client/web/templates/run.html", "client/web/static/app.js", "client/web/static/app.css"} <= names

    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", str(venv))
    python, cairn = str(venv / "bin" / "python"), str(venv / "bin" / "cairn")
    # pyproject's dependencies alone: pip resolves everything they need, as `pip install .` would.
    await run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel), seconds=900)

    outside = tmp_path / "elsewhere"  # not the source tree, so only the installed wheel can be imported
    outside.mkdir()
    code, _, err = await run(python, "-c", "import worker, testkit", check=False, cwd=outside)
    assert code != 0 and "No module named 'testkit'" in err, err

    llm = ScriptedLLMProcess().start()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "OPENAI_", "CAIRN_", "PYTHON"))
    }
    env |= {
        "TEMPORAL_ADDRESS": dev_server.address,
        "CAIRN_TASK_QUEUE": f"wheel-{uuid.uuid4().hex[:8]}",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "sk-wheel",
        "CAIRN_HOME": str(tmp_path / "home"),
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: ASYNC230 - a file the worker writes, closed below
    worker = await asyncio.create_subprocess_exec(
        python, "-m", "worker", cwd=outside, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    try:
        code, out, err = await run(
            cairn,
            "research",
            "How do wheels roll? [steps=2]",
            "--auto-approve",
            "--wait",
            "--json",
            env=env,
            check=False,
            seconds=180,
        )
        assert code == 0, f"{out}\n{err}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
        result = json.loads(out)
        assert result["report"].startswith("# Report: How do wheels roll?")
        assert len(result["plan"]["steps"]) == 2
    finally:
        worker.terminate()
        await worker.wait()
        log.close()
        llm.stop()
    _, where, _ = await run(python, "-c", "import worker; print(worker.__file__)", cwd=outside)
    assert where.strip().startswith(str(venv))  # the worker that ran was the installed one

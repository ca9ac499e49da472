"""The `sandbox.exec` activity through temporalio's ActivityEnvironment (heartbeats, cancellation,
infrastructure errors), the reaper, `cairn sandbox exec --json` as a subprocess, and the host's parsing
of the supervisor's report and its artifact names as hostile input."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities.sandbox import SandboxActivities
from activities.sandbox.config import SandboxConfig
from activities.sandbox.engine import (
    LABEL,
    LABEL_ACTIVITY,
    LABEL_OWNER,
    LABEL_WORKFLOW,
    ReportArtifact,
    SandboxEngine,
    owner_identity,
    parse_report,
)
from activities.sandbox.runner import store_artifacts
from common import errors
from common.names import SANDBOX_EXEC
from common.sandbox_models import ExecRequest, ExecResult
from tests.sandbox_support import REPO, containers_of, sandbox_test_config


@pytest.fixture
async def sandbox_acts(sandbox_image: str, docker_client: docker.DockerClient, tmp_path: Path):
    acts = SandboxActivities(sandbox_test_config(tmp_path, pool_size=0))
    yield acts
    instance = acts.runner.engine.instance
    await acts.close()
    assert containers_of(docker_client, instance) == []


async def test_activity_name_and_heartbeats(sandbox_acts: SandboxActivities, tmp_path: Path) -> None:
    assert sandbox_acts.exec.__temporal_activity_definition.name == SANDBOX_EXEC  # type: ignore[attr-defined]
    env = ActivityEnvironment()
    beats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    code = "import time\nfor i in range(4):\n    time.sleep(1)\nprint('done')\nopen('out/r.txt','w').write('hi')\n"
    res = await env.run(sandbox_acts.exec, ExecRequest(code=code, step="step 1/a"))
    assert isinstance(res, ExecResult)
    assert res.exit_code == 0 and res.stdout == "done\n"
    # heartbeat_seconds is 0.5 in tests and the program sleeps 4 s.
    assert len(beats) >= 3
    # Artifacts land under <artifacts>/<workflow id>/<step>, with the step made path-safe.
    assert [Path(a.path) for a in res.artifacts] == [tmp_path / "artifacts" / "test" / "step_1_a" / "r.txt"]


async def test_cancellation_kills_the_container(
    sandbox_acts: SandboxActivities, docker_client: docker.DockerClient
) -> None:
    env = ActivityEnvironment()
    instance = sandbox_acts.runner.engine.instance
    running: list[list[dict[str, object]]] = []

    def on_heartbeat(*_: object) -> None:
        # First heartbeat: the program is running. Record the container, then cancel.
        running.append(containers_of(docker_client, instance))
        env.cancel()

    env.on_heartbeat = on_heartbeat
    req = ExecRequest(
        code="import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n", timeout_seconds=300
    )
    with pytest.raises((asyncio.CancelledError, CancelledError)):
        await env.run(sandbox_acts.exec, req)
    assert len(running[0]) == 1 and running[0][0]["State"] == "running"
    labels = running[0][0]["Labels"]
    assert labels[LABEL_WORKFLOW] == "test" and labels[LABEL_ACTIVITY] == "test"  # type: ignore[index]
    # Killed and removed before the cancellation propagated, not at the 300 s timeout.
    assert containers_of(docker_client, instance) == []


async def test_missing_image_is_non_retryable(sandbox_image: str, tmp_path: Path) -> None:
    acts = SandboxActivities(sandbox_test_config(tmp_path, image="cairn-sandbox:no-such-version"))
    try:
        with pytest.raises(ApplicationError) as info:
            await ActivityEnvironment().run(acts.exec, ExecRequest(code="print(1)"))
        assert info.value.type == errors.SANDBOX_IMAGE_MISSING
        assert info.value.non_retryable
        assert "cairn sandbox build" in str(info.value)
    finally:
        await acts.close()


def test_reaper_removes_orphans_and_keeps_live_owners(
    sandbox_image: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    engine = SandboxEngine(sandbox_test_config(tmp_path))
    dead_pid = subprocess.Popen(["true"])  # a process that has certainly exited
    dead_pid.wait()
    owner_dead = owner_identity(os.getpid()).split("|")[0] + f"|{dead_pid.pid}|1"
    orphan = engine.create_started({LABEL_OWNER: owner_dead})
    live_foreign = engine.create_started({LABEL_OWNER: owner_identity(os.getppid())})
    mine = engine.create_started()
    leaked = SandboxEngine(sandbox_test_config(tmp_path))
    leaked_cid = leaked.create_started()
    leaked.close()  # an engine closed without removing its container: the container is leaked
    try:
        reaped = set(engine.reap())
        assert orphan in reaped and leaked_cid in reaped
        assert live_foreign not in reaped and mine not in reaped
        ids = {c["Id"] for c in docker_client.api.containers(all=True, filters={"label": f"{LABEL}=1"})}
        assert orphan not in ids and leaked_cid not in ids
        assert {live_foreign, mine} <= ids
    finally:
        for cid in (orphan, live_foreign, mine, leaked_cid):
            engine.remove(cid)
        engine.close()


def test_cli_exec_json(sandbox_image: str, docker_client: docker.DockerClient, tmp_path: Path) -> None:
    program = tmp_path / "prog.py"
    program.write_text(
        "import sys\nprint('hello from the sandbox')\nopen('out/a.txt','w').write('abc')\nsys.exit(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env["CAIRN_HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.sandbox_cli", "exec", str(program), "--json", "--timeout", "20"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    out = json.loads(stdout)
    assert {"exit_code", "stdout", "stderr", "timed_out", "oom_killed", "duration_ms", "artifacts"} <= set(
        out
    )
    assert out["exit_code"] == 3 and out["stdout"] == "hello from the sandbox\n"
    assert out["timed_out"] is False and out["oom_killed"] is False
    (art,) = out["artifacts"]
    assert art["name"] == "a.txt" and art["size"] == 3
    assert Path(art["path"]).read_text() == "abc"
    assert Path(art["path"]).is_relative_to(tmp_path / "home" / "artifacts")
    # The CLI process is gone, so nothing it owned may remain.
    owned = [
        c["Id"]
        for c in docker_client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
        if c["Labels"].get(LABEL_OWNER, "").split("|")[1:2] == [str(proc.pid)]
    ]
    assert owned == []


# -- the supervisor's report is hostile input ------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _report(**changes: object) -> bytes:
    report: dict[str, object] = {
        "cairn_report": 1,
        "exit_code": 0,
        "timed_out": False,
        "duration_ms": 5,
        "stdout": {"head": _b64(b"hi\n"), "tail": "", "total": 3},
        "stderr": {"head": "", "tail": "", "total": 0},
        "oom_kills": 0,
        "pids_max_events": None,
        "artifacts": [{"name": "a.txt", "size": 3, "data": _b64(b"abc")}],
        "artifacts_skipped": [],
        "artifacts_skipped_unlisted": 0,
    }
    report.update(changes)
    return json.dumps(report).encode()


_CFG = SandboxConfig()
_ART = {"name": "a.txt", "size": 3, "data": _b64(b"abc")}
_MALFORMED = {
    "only the marker": (b'{"cairn_report":1}', "exit_code: Field required"),
    "not JSON": (b"forged report", "Invalid JSON"),
    "not UTF-8": (b'{"cairn_report":1,"exit_code":\xff}', "Invalid JSON"),
    "not an object": (b"[1]", "report: Input should be an object"),
    "another version": (_report(cairn_report=2), "cairn_report: Input should be 1"),
    "exit code as text": (_report(exit_code="0"), "exit_code: Input should be a valid integer"),
    "exit code out of range": (
        _report(exit_code=100_000),
        "exit_code: Input should be less than or equal to 255",
    ),
    "flag as number": (_report(timed_out=1), "timed_out: Input should be a valid boolean"),
    "huge number": (_report(duration_ms=10**40), "duration_ms: Input should be less than"),
    "unknown field": (_report(evil=True), "evil: Extra inputs are not permitted"),
    "stream not base64": (
        _report(stdout={"head": "@@@@", "tail": "", "total": 4}),
        "stdout.head: Value error, not base64",
    ),
    "stream over the cap": (
        _report(stdout={"head": _b64(b"x" * (_CFG.output_cap_bytes + 1)), "tail": "", "total": 10**6}),
        "stdout keeps",
    ),
    "stream total below what it keeps": (
        _report(stdout={"head": _b64(b"abc"), "tail": "", "total": 1}),
        "stdout keeps 3 bytes of 1",
    ),
    "negative size": (
        _report(artifacts=[{**_ART, "size": -1}]),
        "artifacts.0.size: Input should be greater than or equal to 0",
    ),
    "size that lies": (_report(artifacts=[{**_ART, "size": 2}]), "artifact size 2 with 3 bytes"),
    "artifact data not base64": (_report(artifacts=[{**_ART, "data": 7}]), "must be a base64 string"),
    "huge name": (_report(artifacts=[{**_ART, "name": "n" * 100_000}]), "at most 512 characters"),
    "empty name": (_report(artifacts=[{**_ART, "name": ""}]), "at least 1 character"),
    "too many artifacts": (_report(artifacts=[_ART] * 21), "21 artifacts (limit 20)"),
    "huge reason": (
        _report(artifacts_skipped=[{"name": "x", "size": 0, "reason": "r" * 1_000_000}]),
        "artifacts_skipped.0.reason: String should have at most 200 characters",
    ),
    "too many skipped listed": (
        _report(artifacts_skipped=[{"name": "x", "size": 0, "reason": "r"}] * 21),
        "artifacts_skipped: List should have at most 20 items",
    ),
    "negative unlisted count": (
        _report(artifacts_skipped_unlisted=-5),
        "artifacts_skipped_unlisted: Input should be greater than or equal to 0",
    ),
}


def test_a_valid_report_parses() -> None:
    rep = parse_report(_report(), _CFG)
    assert rep.stdout.head == b"hi\n" and rep.artifacts[0].data == b"abc"


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_a_malformed_report_is_a_typed_non_retryable_error(case: str) -> None:
    line, problem = _MALFORMED[case]
    with pytest.raises(ApplicationError) as info:
        parse_report(line, _CFG)
    assert info.value.type == errors.SANDBOX_REPORT_INVALID and info.value.non_retryable
    message = info.value.message
    assert message.startswith("sandbox report invalid") and problem in message, message
    assert len(message) <= 1000


# -- artifact names from a report are hostile input ------------------------------------------------


def test_forged_artifact_names_are_stored_apart_and_inside(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    (directory / "was_a_dir").mkdir(parents=True)  # left by an earlier attempt of the same step
    (directory / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    names = [
        "a", "a/b", "a/b/c", "x\x01.txt", "x\x02.txt", "a", "was_a_dir", "link", "link/x.txt",
        "../up.txt", "/etc/passwd", "d/../../e", ".", "./ok.txt", "s\\..\\t", "/".join(["deep"] * 30),
        "é" * 300,
    ]  # fmt: skip
    items = [
        ReportArtifact.model_validate({"name": n, "size": i + 1, "data": _b64(bytes(i + 1))})
        for i, n in enumerate(names)
    ]
    stored, refused = store_artifacts(items, directory)
    assert sorted(s.name for s in refused) == ["../up.txt", "_", "d/../../e", "etc/passwd"]
    assert {s.reason for s in refused} == {"name outside out/"}
    assert len(stored) == len(names) - len(refused)
    root = directory.resolve()
    assert len({a.path for a in stored}) == len(stored)  # nothing overwritten by a later name
    for art in stored:
        path = Path(art.path)
        assert path.is_relative_to(root) and path.read_bytes() == bytes(art.size), art
    assert not (tmp_path / "outside").exists()
    assert [a.name for a in stored][:5] == ["a", "a/b", "a/b/c", "x_.txt", "x_.txt"]
    assert Path(stored[0].path) == root / "a" and Path(stored[3].path) == root / "x_.txt"
    assert "ok.txt" in [a.name for a in stored] and "s_.._t" in [a.name for a in stored]
    deep = next(a.name for a in stored if a.name.startswith("deep/"))
    assert deep == "/".join(["deep"] * 6 + ["~", "deep"])
    long_name = next(a.name for a in stored if a.name.startswith("é"))
    assert long_name == "é" * 49 + "~"  # 99 bytes of two-byte characters, cut at a character

"""The `sandbox.exec` activity through temporalio's ActivityEnvironment (heartbeats, cancellation,
infrastructure errors), the reaper, and `cairn sandbox exec --json` as a subprocess."""

from __future__ import annotations

import asyncio
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
from activities.sandbox_engine import (
    LABEL,
    LABEL_ACTIVITY,
    LABEL_OWNER,
    LABEL_WORKFLOW,
    SandboxEngine,
    owner_identity,
)
from common.names import SANDBOX_EXEC
from common.sandbox_models import ERR_IMAGE_MISSING, ExecRequest, ExecResult
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
        assert info.value.type == ERR_IMAGE_MISSING
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

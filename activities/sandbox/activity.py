"""The `sandbox.exec` activity: run model-written Python in a locked-down, network-less container.

Why this exists: the coder step needs to compute (numpy, pandas, matplotlib) without giving the model
the worker's network, files or keys. `SandboxActivities` is built once at worker start and holds the
Docker client and the warm pool; the engine is in engine.py, the run logic in runner.py.

Worker wiring:
    sandbox = SandboxActivities()
    await sandbox.start()            # reaps orphans, fills the pool; raises if engine/image missing
    Worker(..., activities=[sandbox.exec, ...])
    ...
    await sandbox.close()

Must never: raise for a program that failed (the model sees exit_code, stderr and `error` instead),
return a result for an infrastructure failure (that is an ApplicationError with a stable type), or
run without heartbeating (a dead worker's run must move elsewhere within seconds).
"""

from __future__ import annotations

import re
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.sandbox.config import SandboxConfig
from activities.sandbox.engine import LABEL_ACTIVITY, LABEL_WORKFLOW
from activities.sandbox.runner import SandboxRunner
from activities.telemetry import Telemetry
from common.names import SANDBOX_EXEC
from common.sandbox_models import ExecRequest, ExecResult


def _safe(part: str) -> str:
    """One path component from an id or label: no separators, no dot-dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", part)[:120].strip(".")
    return cleaned or "_"


class SandboxActivities:
    def __init__(self, config: SandboxConfig | None = None, telemetry: Telemetry | None = None) -> None:
        self.runner = SandboxRunner(config)
        # build_worker replaces this with the worker client's tracer: only it knows the client.
        self.telemetry = telemetry or Telemetry()

    @property
    def config(self) -> SandboxConfig:
        return self.runner.config

    async def start(self) -> None:
        await self.runner.start()

    async def close(self) -> None:
        await self.runner.close()

    def artifacts_dir(self, workflow_id: str, step: str) -> Path:
        return self.config.artifacts_root / _safe(workflow_id) / _safe(step)

    @activity.defn(name=SANDBOX_EXEC)
    async def exec(self, req: ExecRequest) -> ExecResult:
        info = activity.info()
        step = req.step or f"activity-{info.activity_id}"
        with self.telemetry.sandbox_run(step) as span:
            try:
                result = await self.runner.run(
                    req,
                    artifacts_dir=self.artifacts_dir(info.workflow_id or "no-workflow", step),
                    labels={LABEL_WORKFLOW: info.workflow_id or "", LABEL_ACTIVITY: info.activity_id},
                    # Heartbeats carry no details: the run is not resumable, a retry starts it afresh.
                    on_tick=activity.heartbeat,
                )
            except ApplicationError as err:
                self.telemetry.sandbox_failed(span, err.type or "error")
                raise
            self.telemetry.sandbox_done(span, result)
        activity.logger.info("sandbox run: %s", result.summary())
        return result

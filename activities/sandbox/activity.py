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

Artifacts go to the request's run and step directory in its tenant's part of the artifacts root
(activities/sandbox/artifacts.py lays it out), so one tenant's files are never among another's.

Must never: raise for a program that failed (the model sees exit_code, stderr and `error` instead),
return a result for an infrastructure failure (that is an ApplicationError with a stable type), run
without heartbeating (a dead worker's run must move elsewhere within seconds), or write artifacts for
a tenant that is not one.
"""

from __future__ import annotations

from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.run_events import tell_tool_call
from activities.sandbox.artifacts import step_directory
from activities.sandbox.config import SandboxConfig
from activities.sandbox.engine import LABEL_ACTIVITY, LABEL_WORKFLOW
from activities.sandbox.runner import SandboxRunner
from activities.telemetry import Telemetry
from common import errors
from common.names import SANDBOX_EXEC
from common.sandbox_models import ExecRequest, ExecResult
from common.tenancy import DEFAULT_TENANT


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

    def artifacts_dir(self, workflow_id: str, step: str, tenant: str = DEFAULT_TENANT) -> Path:
        """Where step `step` of run `workflow_id` of `tenant` keeps its artifacts; ValueError for a
        tenant that is not one."""
        return step_directory(self.config.artifacts_root, tenant, workflow_id, step)

    @activity.defn(name=SANDBOX_EXEC)
    async def exec(self, req: ExecRequest) -> ExecResult:
        info = activity.info()
        step = req.step or f"activity-{info.activity_id}"
        try:
            directory = self.artifacts_dir(req.run_id or info.workflow_id or "no-workflow", step, req.tenant)
        except ValueError as err:
            raise ApplicationError(
                str(err), type=errors.SANDBOX_INVALID_REQUEST, non_retryable=True
            ) from None
        with self.telemetry.sandbox_run(step) as span:
            try:
                result = await self.runner.run(
                    req,
                    artifacts_dir=directory,
                    labels={LABEL_WORKFLOW: info.workflow_id or "", LABEL_ACTIVITY: info.activity_id},
                    # Heartbeats carry no details: the run is not resumable, a retry starts it afresh.
                    on_tick=activity.heartbeat,
                )
            except ApplicationError as err:
                self.telemetry.sandbox_failed(span, err.type or "error")
                raise
            self.telemetry.sandbox_done(span, result)
        activity.logger.info("sandbox run: %s", result.summary())
        first_line = next((line for line in req.code.splitlines() if line.strip()), "")
        await tell_tool_call(
            "run_code", first_line, "ok" if result.exit_code == 0 else f"exit {result.exit_code}"
        )
        return result

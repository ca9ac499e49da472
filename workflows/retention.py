"""RetentionWorkflow: one sweep of every tenant's closed runs past its retention, started by the
`cairn-retention` Temporal Schedule (client/retention.py), never by a home-made cron.

The sweep itself is one activity (activities/retention.py): it reads visibility, histories and the
stores, so it is I/O; this workflow gives it its timeouts and retries and records what it deleted as
the run's result. Deterministic only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from common.names import RETENTION_SWEEP, RETENTION_WORKFLOW
    from common.retention_models import SweepRequest, SweepResult
    from workflows.inputs import one_input

# A sweep reads every open run's history and deletes files: minutes on a large deployment; it
# heartbeats, so a dead worker's sweep starts again elsewhere (deleting is idempotent).
SWEEP_START_TO_CLOSE = timedelta(hours=2)
SWEEP_HEARTBEAT = timedelta(seconds=60)
SWEEP_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=10))


@workflow.defn(name=RETENTION_WORKFLOW)
class RetentionWorkflow:
    @workflow.run
    async def run(self, *inputs: Any) -> SweepResult:
        request = one_input(RETENTION_WORKFLOW, inputs, SweepRequest) if inputs else SweepRequest()
        result: SweepResult = await workflow.execute_activity(
            RETENTION_SWEEP,
            request,
            result_type=SweepResult,
            start_to_close_timeout=SWEEP_START_TO_CLOSE,
            heartbeat_timeout=SWEEP_HEARTBEAT,
            retry_policy=SWEEP_RETRY,
            summary="sweep closed runs past retention",
        )
        return result

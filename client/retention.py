"""The retention sweep's Temporal Schedule, and the namespace's history retention to match it.

The worker makes sure the schedule exists when it starts (`ensure_retention_schedule`): one per task
queue, `cairn-retention-<queue>`, daily at 03:00 UTC by default (CAIRN_RETENTION_CRON), skipping a sweep
while the last still runs. `cairn dev` sets the embedded namespace's history retention to the longest
tenant retention (`set_history_retention`), so Temporal keeps a closed run's history as long as Cairn
keeps its files; on a production server an operator sets it (docs/operations.md).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.api.namespace.v1 import NamespaceConfig
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, UpdateNamespaceRequest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from common.names import RETENTION_WORKFLOW
from common.retention_models import SweepRequest

DEFAULT_CRON = "0 3 * * *"


def schedule_id(task_queue: str) -> str:
    return f"cairn-retention-{task_queue}"


async def ensure_retention_schedule(
    client: Client, task_queue: str, cron: str = DEFAULT_CRON
) -> ScheduleHandle:
    """The sweep's schedule, created if it does not exist (an existing one is left as an operator set it)."""
    sid = schedule_id(task_queue)
    try:
        await client.create_schedule(
            sid,
            Schedule(
                action=ScheduleActionStartWorkflow(
                    RETENTION_WORKFLOW, SweepRequest(), id=f"{sid}-sweep", task_queue=task_queue
                ),
                spec=ScheduleSpec(cron_expressions=[cron]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )
    except ScheduleAlreadyRunningError:
        pass  # Already there: kept as it is.
    return client.get_schedule_handle(sid)


async def set_history_retention(client: Client, days: float) -> None:
    """The namespace keeps closed workflows' histories `days` (at least one day, Temporal's minimum)."""
    ttl = timedelta(days=max(days, 1.0))
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=client.namespace)
    )
    current = described.config.workflow_execution_retention_ttl.ToTimedelta()
    if current == ttl:
        return
    config = NamespaceConfig()
    config.workflow_execution_retention_ttl.FromTimedelta(ttl)
    await client.workflow_service.update_namespace(
        UpdateNamespaceRequest(namespace=client.namespace, config=config)
    )


async def keep_histories_as_long_as_files(client: Client) -> float:
    """The namespace's history retention set to the longest tenant retention of CAIRN_TENANTS_FILE
    (30 days by default); the days it set."""
    from client.server.policy import Policies

    policies = Policies.from_env()
    days = max([policies.defaults.retention_days, *(p.retention_days for p in policies.tenants.values())])
    await set_history_retention(client, days)
    return days

"""The `runs.admit` activity: a scheduled run admitted under its tenant's quotas and domain policy when
it begins, as the API admits a run it starts.

Temporal's scheduler starts a scheduled run from the action stored with its schedule, so the API never
sees it start. The run's first act (workflows/research.py) is this activity, which applies what the
API applies to a start: the tenant's concurrent-run limit (the run itself not counted), its daily
allowance turned into the run's budgets and reserved in the ledger (table `cairn_usage`), and the
tenant's domain policy as it is now, not as it was when the schedule was made. The rules are the API's
own (client/server/quotas.py), on the worker's configuration (CAIRN_TENANTS_FILE,
CAIRN_ALLOW_DOMAINS, CAIRN_BLOCK_DOMAINS) and the API's ledger (DATABASE_URL, else CAIRN_HOME/api.db):
worker and API must be given the same, or a tenant has two sets of limits.

Admissions of one tenant take turns in this process (the quotas' per-tenant lock, held across the count
and the reserve), and an admitted run counts as running for the next admission here even before
visibility lists it. Across worker processes and API replicas the count can overshoot by the starts
that race within visibility's delay (a second or two), as it can for the API's replicas.

Must never: admit a run past a limit (a refusal is a non-retryable QuotaExceeded whose message says
which limit and what to do), reserve a run's budget twice (an attempt after its reserve was written
gets that reserve back), or count the run being admitted against itself.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from client.server.policy import Policies
from client.server.quotas import Admission, QuotaRefused, Quotas
from common import errors
from common.models import AdmitRun, Admitted
from common.names import RUNS_ADMIT
from common.tenancy import valid_tenant


class AdmissionActivities:
    def __init__(self, quotas: Quotas, policies: Policies) -> None:
        self._quotas = quotas
        self._policies = policies

    @activity.defn(name=RUNS_ADMIT)
    async def admit(self, request: AdmitRun) -> Admitted:
        try:
            valid_tenant(request.tenant)
        except ValueError as err:
            raise ApplicationError(str(err), type=errors.INVALID_INPUT, non_retryable=True) from None
        if not request.workflow_id:
            raise ApplicationError(
                "runs.admit needs the run's id", type=errors.INVALID_INPUT, non_retryable=True
            )
        tenant, run_id = request.tenant, request.workflow_id
        asked = Admission(request.token_budget, request.cost_budget_usd)
        policy = self._policies.of(tenant)
        if policy.tokens_per_day or policy.usd_per_day:
            # Only a daily limit needs the ledger: a deployment without one never opens the database.
            await self._quotas.ready()
        # Count and reserve in the tenant's turn, so two runs admitted by this process cannot both take
        # the last slot or the day's last tokens.
        async with self._quotas.turn(tenant):
            admission = await self._quotas.held(tenant, run_id, asked)
            if admission is None:
                try:
                    admission = await self._quotas.admit(tenant, asked, exclude=run_id)
                except QuotaRefused as refused:
                    raise ApplicationError(
                        f"{refused.detail}. This scheduled run did not research; the schedule's next run "
                        "is admitted afresh (or trigger the schedule once there is room)",
                        type=errors.QUOTA_EXCEEDED,
                        non_retryable=True,
                    ) from None
                await self._quotas.started(tenant, run_id, admission)
        return Admitted(
            token_budget=admission.token_budget,
            cost_budget_usd=admission.cost_budget_usd,
            domains=self._policies.domains_of(tenant),
        )

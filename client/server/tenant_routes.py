"""`DELETE /v1/tenant`: an admin erases their own tenant (client/purge.py says what goes, and in what
order). The tenant is the caller's, from their credential, never from the request; the answer counts
what was deleted. Afterwards the caller's own key is gone too, so every further request is a 401.
"""

from __future__ import annotations

from fastapi import APIRouter

from client.purge import Erased, purge_tenant
from client.server.problems import Problem
from client.server.routes import Admin, Svc

tenant = APIRouter(tags=["tenant"])


@tenant.delete("/tenant", response_model=Erased, summary="Erase the caller's tenant and everything of it")
async def purge(principal: Admin, services: Svc, confirm: str = "") -> Erased:
    """Runs, schedules, documents, library, archives, payloads, reports, artifacts, keys and sessions.
    `?confirm=<tenant>` must name the tenant: a purge cannot be undone."""
    if confirm != principal.tenant:
        raise Problem(
            422, f"add ?confirm={principal.tenant} to erase tenant {principal.tenant}", code="invalid"
        )
    return await purge_tenant(
        principal.tenant,
        temporal=services.cairn.temporal,
        corpus=await services.corpus(),
        env=services.config.env,
        db=services.db,
    )

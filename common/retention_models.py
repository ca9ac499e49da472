"""What the retention sweep takes and answers (workflows/retention.py, activities/retention.py).

Evolve only by adding fields with defaults: they are in event history.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class SweepRequest(_Tolerant):
    """One sweep of every tenant's closed runs past its retention."""

    tenants: list[str] = Field(default_factory=list, description="only these; empty: every tenant")


class TenantSwept(_Tolerant):
    tenant: str
    retention_days: float
    runs: int = 0  # closed runs past retention whose leftovers were swept
    archives: int = 0  # their archives of fetched pages (corpus scopes)
    reports: int = 0
    report_bytes: int = 0
    artifacts: int = 0
    artifact_bytes: int = 0
    payloads: int = 0
    payload_bytes: int = 0
    kept_payloads: int = 0  # old payloads kept because an open run still references them


class SweepResult(_Tolerant):
    tenants: list[TenantSwept] = Field(default_factory=list)

    @property
    def deleted_bytes(self) -> int:
        return sum(t.report_bytes + t.artifact_bytes + t.payload_bytes for t in self.tenants)

"""Each tenant's share and limits: fairness weight, concurrent runs, daily tokens and dollars, and the
request rate of each of its credentials.

Read once at start-up from the TOML file named by CAIRN_TENANTS_FILE (docs/operations.md shows one):

    [defaults]                # every tenant, unless its own section says otherwise
    weight = 1.0              # share of task dispatch under contention (Temporal fairness)
    concurrent_runs = 10      # runs at once; 0 is no limit
    tokens_per_day = 0        # input + output tokens per UTC day; 0 is no limit
    usd_per_day = 0.0         # US dollars per UTC day; 0 is no limit
    requests_per_minute = 600 # per API key or token subject; 0 is no limit
    allow_domains = []        # the only web domains its runs may search and read (common/domains.py)
    block_domains = []        # web domains its runs may never search or read
    retention_days = 30       # closed runs' payloads, archives, reports and artifacts are kept this long

    [tenants.acme]
    weight = 3.0
    concurrent_runs = 40

Without the file every tenant has the defaults above. A malformed file stops the API at start-up with
the reason, never half-applies. The deployment's own domain lists (CAIRN_ALLOW_DOMAINS,
CAIRN_BLOCK_DOMAINS) are read here too: every run the API starts carries both layers.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.domains import MAX_DOMAINS, DomainList, DomainPolicy, deployment_domains, run_policy
from common.env import ConfigError
from common.tenancy import valid_tenant
from workflows.inputs import explain


class TenantPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    # Temporal clamps weights to [0.001, 1000].
    weight: float = Field(default=1.0, ge=0.001, le=1000)
    concurrent_runs: int = Field(default=10, ge=0)
    tokens_per_day: int = Field(default=0, ge=0)
    usd_per_day: float = Field(default=0.0, ge=0)
    requests_per_minute: int = Field(default=600, ge=0)
    allow_domains: tuple[str, ...] = Field(default=(), max_length=MAX_DOMAINS)
    block_domains: tuple[str, ...] = Field(default=(), max_length=MAX_DOMAINS)

    @field_validator("allow_domains", "block_domains", mode="before")
    @classmethod
    def _domains(cls, value: object) -> tuple[str, ...]:
        return DomainList._domains(value)

    def domains(self) -> DomainList:
        return DomainList(allow=self.allow_domains, block=self.block_domains)

    # Days a closed run's leftovers (payloads, archive, report, artifacts) are kept (activities/retention.py).
    retention_days: float = Field(default=30.0, gt=0, le=36600)


@dataclass(frozen=True)
class Policies:
    defaults: TenantPolicy = field(default_factory=TenantPolicy)
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)
    deployment_domains: DomainList = field(default_factory=DomainList)

    def of(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, self.defaults)

    def domains_of(self, tenant: str) -> DomainPolicy | None:
        """The domain policy of a run of `tenant`: the deployment's lists and the tenant's."""
        return run_policy(self.deployment_domains, self.of(tenant).domains())

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "the tenants file") -> Policies:
        unknown = set(data) - {"defaults", "tenants"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown section(s) {sorted(unknown)}; use [defaults] and [tenants.<id>]"
            )
        try:
            defaults = TenantPolicy.model_validate(data.get("defaults", {}))
        except ValidationError as err:
            raise ConfigError(f"{where} [defaults]: {explain(err)}") from None
        tenants: dict[str, TenantPolicy] = {}
        for tenant, section in dict(data.get("tenants", {})).items():
            try:
                valid_tenant(tenant)
            except ValueError as err:
                raise ConfigError(f"{where} [tenants.{tenant}]: {err}") from None
            try:
                tenants[tenant] = TenantPolicy.model_validate({**defaults.model_dump(), **dict(section)})
            except (ValidationError, TypeError, ValueError) as err:
                detail = explain(err) if isinstance(err, ValidationError) else str(err)
                raise ConfigError(f"{where} [tenants.{tenant}]: {detail}") from None
        return cls(defaults, tenants)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policies:
        env = os.environ if env is None else env
        try:
            deployment = deployment_domains(env)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        name = env.get("CAIRN_TENANTS_FILE")
        if not name:
            return cls(deployment_domains=deployment)
        path = Path(name).expanduser()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"CAIRN_TENANTS_FILE={name}: cannot read it ({err.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"CAIRN_TENANTS_FILE={name} is not TOML: {err}") from None
        parsed = cls.parse(data, f"CAIRN_TENANTS_FILE={name}")
        return cls(parsed.defaults, parsed.tenants, deployment)

"""Which web domains a run may search and read: allow and block lists, per deployment and per tenant.

Why this exists: an operator (or a tenant's contract) may forbid sources (a competitor's site, a content
farm) or confine research to a few (a company's own sites, official statistics). The lists are set
where runs start, never by a request or a model: `cairn serve` reads the deployment's
(`CAIRN_ALLOW_DOMAINS`, `CAIRN_BLOCK_DOMAINS`) and each tenant's (`allow_domains`, `block_domains` in
CAIRN_TENANTS_FILE) and puts both into the run's input; the CLI puts the deployment's. The run carries
them to every `web_search` (hits outside the policy are dropped, and Tavily is asked for the allowed
domains only) and `fetch_url` (refused, on every redirect hop, with the typed error `DomainBlocked`
the model reads), and its report's Method section states them.

A domain names itself and every subdomain: `example.org` covers `www.example.org`, not `badexample.org`.
A block always wins; with allow lists, a host must be in every one (the deployment's and the tenant's).

Pure: no I/O beyond reading the environment in `from_env`; workflows use the rest.

Must never: let a host through that a block list names, or one outside a non-empty allow list; accept a
list entry that is not a domain (a URL, a path, a wildcard in the middle), which would silently match
nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.env import ConfigError

MAX_DOMAINS: Final = 500
_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normal_domain(value: str) -> str:
    """`value` as a list entry: lower case, IDNA, no leading `*.` or `.`, no trailing dot; a ValueError
    for anything that is not a domain name or an IP address."""
    domain = value.strip().lower().removeprefix("*.").strip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{value[:100]!r} is not a domain name") from None
    if not domain or len(domain) > 253 or not all(_LABEL.match(label) for label in domain.split(".")):
        raise ValueError(f"{value[:100]!r} is not a domain name (write example.org, not a URL)")
    return domain


def host_of(url: str) -> str | None:
    """The host a URL names, lower case and without a trailing dot, or None."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        return host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return host.rstrip(".")


def _covers(domain: str, host: str) -> bool:
    return host == domain or host.endswith("." + domain)


class DomainList(BaseModel):
    """One layer of policy: the deployment's, or a tenant's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: tuple[str, ...] = Field(default=(), max_length=MAX_DOMAINS)
    block: tuple[str, ...] = Field(default=(), max_length=MAX_DOMAINS)

    @field_validator("allow", "block", mode="before")
    @classmethod
    def _domains(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple):
            raise ValueError("a list of domain names")
        return tuple(dict.fromkeys(normal_domain(str(v)) for v in value))

    @property
    def empty(self) -> bool:
        return not self.allow and not self.block


class DomainPolicy(BaseModel):
    """The policy a run applies: each layer must let a host through."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment: DomainList = Field(default_factory=DomainList)
    tenant: DomainList = Field(default_factory=DomainList)

    @property
    def layers(self) -> tuple[DomainList, ...]:
        return tuple(layer for layer in (self.deployment, self.tenant) if not layer.empty)

    @property
    def empty(self) -> bool:
        return not self.layers

    def refusal(self, url: str) -> str | None:
        """Why the policy refuses `url` (a sentence the model can act on), or None when it allows it."""
        if self.empty:
            return None
        host = host_of(url)
        if host is None:
            return f"{url[:200]!r} names no host the domain policy could allow"
        for layer in self.layers:
            blocked = next((d for d in layer.block if _covers(d, host)), None)
            if blocked is not None:
                return f"{host} is blocked by this run's domain policy ({blocked}); use another source"
        for layer in self.layers:
            if layer.allow and not any(_covers(d, host) for d in layer.allow):
                return (
                    f"{host} is not among the domains this run may use ({', '.join(layer.allow[:20])}); "
                    "use one of those"
                )
        return None

    def allowed_only(self) -> tuple[str, ...]:
        """The domains a search may be confined to: the allow list when exactly one layer has one
        (two lists intersect in ways a backend cannot be asked for; the results are filtered anyway)."""
        lists = [layer.allow for layer in self.layers if layer.allow]
        return lists[0] if len(lists) == 1 else ()

    def blocked(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for layer in self.layers for d in layer.block))

    def describe(self) -> list[str]:
        """The policy in words, one line per list, for the report's Method section."""
        lines = []
        for name, layer in (("deployment", self.deployment), ("tenant", self.tenant)):
            if layer.allow:
                lines.append(f"allowed by the {name}: {', '.join(layer.allow)}")
            if layer.block:
                lines.append(f"blocked by the {name}: {', '.join(layer.block)}")
        return lines


def deployment_domains(env: Mapping[str, str] | None = None) -> DomainList:
    """The deployment's lists from CAIRN_ALLOW_DOMAINS and CAIRN_BLOCK_DOMAINS (comma or space
    separated); a ValueError naming the variable for an entry that is not a domain."""
    env = os.environ if env is None else env
    values = {}
    for field, name in (("allow", "CAIRN_ALLOW_DOMAINS"), ("block", "CAIRN_BLOCK_DOMAINS")):
        raw = env.get(name, "")
        try:
            values[field] = DomainList._domains(raw)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    return DomainList(**values)


def run_policy(deployment: DomainList, tenant: DomainList | None = None) -> DomainPolicy | None:
    """The policy to put into a run's input, or None when neither layer says anything."""
    policy = DomainPolicy(deployment=deployment, tenant=tenant or DomainList())
    return None if policy.empty else policy


def deployment_policy(env: Mapping[str, str] | None = None) -> DomainPolicy | None:
    """A run's policy where no tenant has lists of its own (the CLI without the API: the default
    tenant): the deployment's; a ConfigError naming the variable that is wrong."""
    try:
        return run_policy(deployment_domains(env))
    except ValueError as err:
        raise ConfigError(str(err)) from None

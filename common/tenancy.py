"""Tenants: who a run, a document or a report belongs to, and how that is written everywhere it goes.

A tenant id is a short lower-case name (`acme`, `team-7`). It is chosen by whoever configures Cairn (an
API key's tenant, or an OIDC claim) and then appears in workflow ids, search-attribute values, corpus
scopes and directory names, so its alphabet is kept to what is safe in all of them: letters, digits and
inner hyphens. Nothing else is ever accepted as a tenant, which is also why a tenant can be written into
a visibility query without quoting worries.

The CLI used without the API is the single tenant `default`, and runs from before tenants (no
CairnTenant search attribute, no `tenant` in their input) belong to it.

Must never: derive a tenant from anything a caller sends in a request body or path; accept a value
outside TENANT_PATTERN.
"""

from __future__ import annotations

import re
from typing import Final

DEFAULT_TENANT: Final = "default"
MAX_TENANT_CHARS: Final = 40
TENANT_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
# A run started through the API has the id `<tenant>.<rest>`: a tenant has no '.', so the first '.'
# ends it. The id alone never decides who may see a run (the API checks the CairnTenant search
# attribute); the prefix makes ids unique across tenants and readable in the Web UI.
RUN_ID_SEPARATOR: Final = "."
# The corpus scope of the default tenant's documents: the name the corpus had before tenants, so
# documents ingested then stay where runs look for them.
DEFAULT_CORPUS_SCOPE: Final = "corpus"


def valid_tenant(value: str) -> str:
    """`value` if it is a tenant id, else ValueError saying what a tenant id is."""
    if not isinstance(value, str) or not TENANT_PATTERN.match(value):
        raise ValueError(
            f"{str(value)[:60]!r} is not a tenant id: 1 to {MAX_TENANT_CHARS} lower-case letters, digits "
            "and inner hyphens"
        )
    return value


def corpus_scope(tenant: str) -> str:
    """The corpus scope that holds `tenant`'s own documents."""
    return DEFAULT_CORPUS_SCOPE if tenant == DEFAULT_TENANT else f"corpus:{valid_tenant(tenant)}"


def library_scope(tenant: str) -> str:
    """The corpus scope of `tenant`'s library: the sources and findings of its finished runs."""
    return f"library:{valid_tenant(tenant)}"


def is_library_scope(scope: str) -> bool:
    return scope.startswith("library:") and TENANT_PATTERN.match(scope.removeprefix("library:")) is not None


def is_document_scope(scope: str) -> bool:
    """Whether `scope` is a tenant's documents (not a run's archive of fetched pages)."""
    return scope == DEFAULT_CORPUS_SCOPE or scope.startswith("corpus:")


def run_id_prefix(tenant: str) -> str:
    return f"{valid_tenant(tenant)}{RUN_ID_SEPARATOR}"


def tenant_of_run_id(workflow_id: str) -> str:
    """The tenant a run's id (or one of its steps' ids, `<run>/<step>`) names: the text before the first
    '.', when that is a tenant id; the default tenant otherwise. Used to partition what a run stores
    (its large payloads); who may see a run is decided by its CairnTenant search attribute."""
    head, dot, _ = workflow_id.partition(RUN_ID_SEPARATOR)
    return head if dot and TENANT_PATTERN.match(head) else DEFAULT_TENANT


def check_run_id(workflow_id: str, tenant: str) -> None:
    """ValueError unless `workflow_id` is an id `tenant` may give a run: an id with a '.' names its
    tenant before the first '.', and that must be `tenant` itself."""
    head, dot, _ = workflow_id.partition(RUN_ID_SEPARATOR)
    if dot and head != tenant:
        raise ValueError(
            f"a '.' in a run id follows the run's tenant, and this run is tenant {tenant}'s: use "
            f"'{tenant}{RUN_ID_SEPARATOR}{workflow_id}', or an id without '.'"
        )


def tenant_directory(tenant: str) -> str:
    """The sub-directory (of reports, artifacts) that holds `tenant`'s files; '' for the default tenant,
    whose files stay where they were before tenants."""
    return "" if tenant == DEFAULT_TENANT else f"tenants/{valid_tenant(tenant)}"


# A schedule's id is `<tenant>.sched-<12 hex digits>`, chosen by Cairn: safe to splice into a
# visibility query (the predecessor of a scheduled run is found by `TemporalScheduledById`) and, like
# a run id, naming its tenant (who may see it is decided by its CairnTenant search attribute).
SCHEDULE_ID_PATTERN: Final = re.compile(r"^([a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?)\.sched-[0-9a-f]{12}$")


def is_schedule_id(value: str) -> bool:
    return isinstance(value, str) and SCHEDULE_ID_PATTERN.match(value) is not None

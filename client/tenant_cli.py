"""`cairn tenant purge TENANT --yes`: an operator erases a tenant (client/purge.py), with the deployment's
own settings (TEMPORAL_*, DATABASE_URL, CAIRN_HOME), not through the API.
"""

from __future__ import annotations

import argparse
from typing import Any

from client.api import CairnError
from client.purge import purge_tenant
from common.config import TemporalConfig
from common.tenancy import valid_tenant


async def cmd_purge(args: argparse.Namespace) -> int:
    import os

    from activities.corpus import open_corpus
    from client.cli import _emit
    from client.server.db import open_database
    from common.plugin import connect

    try:
        valid_tenant(args.tenant)
    except ValueError as err:
        raise CairnError(str(err), "invalid") from None
    if not args.yes:
        raise CairnError(
            f"this erases everything of tenant {args.tenant} and cannot be undone: add --yes", "invalid"
        )
    env = dict(os.environ)
    temporal = await connect(TemporalConfig.from_env(env), offload=False, env=env)
    corpus = open_corpus(env)
    db = await open_database(env)
    try:
        erased = await purge_tenant(args.tenant, temporal=temporal, corpus=corpus, env=env, db=db)
    finally:
        await corpus.close()
        await db.close()
    text = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in erased.model_dump().items() if k != "tenant")
    _emit(args, erased, f"Purged tenant {args.tenant}: {text}")
    return 0


def add_tenant_commands(commands: Any) -> None:
    tenant = commands.add_parser("tenant", help="manage tenants")
    actions = tenant.add_subparsers(dest="action", required=True)
    purge = actions.add_parser("purge", help="erase a tenant: runs, schedules, documents, files, keys")
    purge.add_argument("tenant")
    purge.add_argument("--yes", action="store_true", help="confirm: a purge cannot be undone")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(handler=cmd_purge)

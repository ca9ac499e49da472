"""`cairn keys create|list|revoke`: the API keys of `cairn serve`, managed by whoever runs the server.

Why this exists: the first key of a tenant (and the first admin) has to come from somewhere that needs no
key, and that is the operator's shell with access to the API's database: SQLite in CAIRN_HOME, or the
PostgreSQL in DATABASE_URL. It needs no Temporal server.

Must never: show a key after `create` printed it once, show a secret's hash, or print DATABASE_URL's
password. `create` writes the key alone on stdout (and, with --json, the key inside the JSON), so
`cairn keys create ... > key.txt` captures it without the notice. Exit codes: 0 done, 1 refused
(invalid tenant or role, unknown or already revoked key, database unavailable), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from client.api import CairnError
from client.server.db import DatabaseUnavailable
from client.server.keys import ROLES, ApiKey, KeyStore

T = TypeVar("T")


async def _with_store(work: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run `work` on the key store; refusals and an unavailable database become one CairnError line."""
    try:
        store = await KeyStore.open()
    except DatabaseUnavailable as err:
        raise CairnError(str(err)) from None
    try:
        return await work(store)
    except (DatabaseUnavailable, ValueError) as err:
        raise CairnError(str(err)) from None
    finally:
        await store.close()


def _described(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant": key.tenant,
        "role": key.role,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"


async def _create(args: argparse.Namespace) -> int:
    plaintext, key = await _with_store(lambda store: store.create(args.tenant, args.role, args.name))
    if args.json:
        data = {"key": plaintext, "id": key.id, "tenant": key.tenant, "role": key.role, "name": key.name}
        print(json.dumps(data, indent=2))
    else:
        print(
            f"Created API key {key.id} for tenant {key.tenant} ({key.role}). It is shown only now: keep it "
            "secret, and send it as `Authorization: Bearer <key>`.",
            file=sys.stderr,
        )
        print(plaintext)
    return 0


async def _list(args: argparse.Namespace) -> int:
    keys = await _with_store(lambda store: store.list(args.tenant))
    if args.json:
        print(json.dumps([_described(k) for k in keys], indent=2))
        return 0
    if not keys:
        print("No API keys." if args.tenant is None else f"Tenant {args.tenant} has no API keys.")
        return 0
    print(f"{'ID':<12}  {'TENANT':<20} {'ROLE':<7} {'CREATED':<16}  {'LAST USED':<16}  {'STATUS':<7}  NAME")
    for k in keys:
        status = "active" if k.active else "revoked"
        print(
            f"{k.id:<12}  {k.tenant:<20} {k.role:<7} {_when(k.created_at):<16}  "
            f"{_when(k.last_used_at):<16}  {status:<7}  {k.name}"
        )
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    async def work(store: KeyStore) -> ApiKey | None:
        if await store.revoke(args.id):
            return await store.get(args.id)
        key = await store.get(args.id)
        if key is None:
            raise CairnError(f"no API key has the id {args.id[:40]!r} (see `cairn keys list`)")
        raise CairnError(f"API key {key.id} was already revoked")

    key = await _with_store(work)
    assert key is not None, "a key just revoked is still in the table"
    if args.json:
        print(json.dumps({**_described(key), "revoked": True}, indent=2))
    else:
        print(f"Revoked API key {key.id} of tenant {key.tenant}; requests with it are refused from now on.")
    return 0


def add_keys_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = commands.add_parser(
        "keys",
        help="create, list and revoke the API keys of `cairn serve`",
        description="API keys for `cairn serve`, kept (as hashes) in CAIRN_HOME/api.db, or in the "
        "PostgreSQL of DATABASE_URL. A key belongs to one tenant and has one role: viewer (read), "
        "member (read, start and steer runs), admin (also manage keys).",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)

    def action(name: str, handler: Callable[[argparse.Namespace], Awaitable[int]], text: str) -> Any:
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(handler=handler)
        return sub

    create = action("create", _create, "create a key and print it, once")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for, e.g. acme")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default="", help="a note on whose key it is, shown in lists")
    listing = action("list", _list, "list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = action("revoke", _revoke, "revoke a key: requests with it are refused from now on")
    revoke.add_argument("id", help="the key's id (the 12 characters after `cairn_`)")

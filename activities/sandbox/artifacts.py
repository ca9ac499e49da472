"""Where a coder step's artifacts are kept on the worker, how they are named, and how one is found again.

Why this exists: the `sandbox.exec` activity writes artifacts and the HTTP API serves them, and both must
agree on one layout in which a tenant's files can only be reached as that tenant's. Under the artifacts
root (CAIRN_SANDBOX_ARTIFACTS_DIR, else $CAIRN_HOME/artifacts):

    <run>/<step>/<name>                      the default tenant's runs
    tenants/<tenant>/<run>/<step>/<name>     another tenant's runs (common/tenancy.py tenant_directory)
    cli/<program>/<name>                     `cairn sandbox exec`, no run at all

`<run>` is the research run's workflow id and `<step>` the plan step's id, each made one safe path
component by `path_part`. `<name>` is what the program wrote under /workspace/out, sanitised and bounded
by `shown_name` (up to NAME_DEPTH components), or a flat `<digest>-[<n>-]<leaf>` when that collided with
another file of the step (runner.py store_artifacts). A default-tenant run whose id would make the
directory `tenants` or `cli` gets `<id>-<digest>` instead, so it can never reach into a tenant's or the
CLI's files. Runs from before this layout kept theirs in `<step's workflow id>/<step>/`; the paths their
findings recorded stay valid, and `artifact_path` does not look there.

`path_part` folds distinct ids together (`a/b` and `a_b` are both `a_b`); a run's directory is therefore
unique only among runs whose ids differ in their safe form, which ids Cairn makes (`research-<hex>`,
`<tenant>.<...>`) always do, and a tenant's directory is never shared with another tenant's.

Must never: return a path outside the run directory of the tenant asked for (no `..`, no absolute name,
no symlink followed anywhere below the root), or accept a name store_artifacts could not have written.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Final

from common.tenancy import DEFAULT_TENANT, tenant_directory

# Artifact names as stored and shown: at most NAME_DEPTH components of at most NAME_PART_BYTES each.
NAME_DEPTH: Final = 8
NAME_PART_BYTES: Final = 100
# A collision's flat name puts `<12 hex digits>-<n>-` before a leaf: room for that on top.
_FLAT_PREFIX_BYTES = 32
# Reserved on common file systems, or markup where names are shown; replaced like control characters.
_SPECIAL = frozenset('\\:*?"<>|`')
CLI_DIRECTORY: Final = "cli"
# Top-level names of the root that a default-tenant run's directory must never take.
_RESERVED = frozenset({tenant_directory("x").split("/")[0], CLI_DIRECTORY})


def path_part(part: str) -> str:
    """One path component from an id or label: no separators, no dot-dot, at most 120 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", part)[:120].strip(".")
    return cleaned or "_"


def _safe_part(part: str) -> str:
    """One printable path component of at most NAME_PART_BYTES, keeping a short extension if cut."""
    part = "".join(ch if ch.isprintable() and ch not in _SPECIAL else "_" for ch in part)
    if len(part.encode()) <= NAME_PART_BYTES:
        return part
    ext = PurePosixPath(part).suffix
    ext = ext if len(ext.encode()) <= 12 else ""
    head = part.encode()[: NAME_PART_BYTES - len(ext.encode()) - 1].decode("utf-8", "ignore")
    return f"{head}~{ext}"


def shown_name(name: str) -> str:
    """The bounded, sanitised form of an artifact name from the sandbox, as stored and shown."""
    parts = [_safe_part(p) for p in name.split("/") if p not in ("", ".")]
    if len(parts) > NAME_DEPTH:
        parts = [*parts[: NAME_DEPTH - 2], "~", *parts[-1:]]
    return "/".join(parts) or "_"


def is_artifact_name(name: str) -> bool:
    """Whether `name` could be a stored artifact's name, relative to its step's directory: 1 to NAME_DEPTH
    components, none empty, `.` or `..`, each printable, without a reserved character (a backslash is
    one) and bounded. An absolute name starts with an empty component and is refused with the rest."""
    if not isinstance(name, str) or not name:
        return False
    parts = name.split("/")
    return len(parts) <= NAME_DEPTH and all(_plain_part(p) for p in parts)


def _plain_part(part: str) -> bool:
    return (
        part not in ("", ".", "..")
        and all(ch.isprintable() and ch not in _SPECIAL for ch in part)
        and len(part.encode()) <= NAME_PART_BYTES + _FLAT_PREFIX_BYTES
    )


def run_directory(root: Path, tenant: str, run_id: str) -> Path:
    """The directory of run `run_id`'s artifacts (one sub-directory per step); ValueError for a tenant
    that is not one."""
    part = path_part(run_id)
    if tenant == DEFAULT_TENANT and part.casefold() in _RESERVED:
        part = f"{part}-{hashlib.sha256(run_id.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    return root / tenant_directory(tenant) / part


def step_directory(root: Path, tenant: str, run_id: str, step: str) -> Path:
    """Where the sandbox writes the artifacts of step `step` of run `run_id`."""
    return run_directory(root, tenant, run_id) / path_part(step)


def artifact_path(
    root: Path, tenant: str, workflow_id: str, name: str, *, step: str | None = None
) -> Path | None:
    """The stored file of artifact `name` of run `workflow_id` of `tenant`, resolved, or None: for a name
    that is not a plain artifact name (`../x`, `/etc/passwd`, `a\\b`), for a file that is not there, and
    for any path that would leave the run's directory or pass through a symlink below `root`. With
    `step`, only that step's directory is looked in; without, each step's in order of their names, and
    the first that has the file wins. Blocking (file system calls): call it off the event loop.

    `tenant` is the caller's authenticated tenant; a value that is not a tenant is a ValueError."""
    if not is_artifact_name(name):
        return None
    run = run_directory(root, tenant, workflow_id)
    try:
        base = root.resolve(strict=True)
        real_run = run.resolve(strict=True)
    except (OSError, RuntimeError):  # Missing, or a symlink loop.
        return None
    # Resolving changed nothing below the root: no symlink and no `..` on the way to the run.
    if real_run != base / run.relative_to(root) or not real_run.is_dir():
        return None
    if step is not None:
        steps = [path_part(step)]
    else:
        steps = sorted(p.name for p in real_run.iterdir() if p.is_dir() and not p.is_symlink())
    for each in steps:
        candidate = real_run / each / name
        try:
            found = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if found == candidate and found.is_file():  # Equal: no symlink below the run either.
            return found
    return None

"""`cairn report ID --format md|html|pdf|docx [--output FILE]`: a finished run's report as a file.

Why this exists: the same four files the API and the web app hand out (client/web/export.py), from either
side of the CLI. Through the API (CAIRN_API_URL) the server makes the file, reading artifacts as the
key's tenant; against Temporal directly the CLI makes it here, reading the run's artifacts from this
machine's artifacts directory (the worker's, when they share CAIRN_HOME or CAIRN_SANDBOX_ARTIFACTS_DIR).

Must never: write a binary file to a terminal (without `--output` it goes to a file named after the run),
or leave a half-written file behind (written to a temporary name, then renamed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from client.api import CairnClient, CairnError
from client.http_client import ApiClient
from client.web.export import ExportFormat, ExportUnavailable, artifact_reader, export_report, file_name
from common.tenancy import tenant_of_run_id


async def report_bytes(cairn: CairnClient | ApiClient, run_id: str, fmt: ExportFormat) -> bytes:
    """The report of run `run_id` in `fmt`, made by the API when the CLI goes through it."""
    if isinstance(cairn, ApiClient):
        return await cairn.report_file(run_id, fmt)
    from activities.sandbox.config import SandboxConfig

    result = await cairn.result(run_id)
    root = SandboxConfig.from_env().artifacts_root
    try:
        return await export_report(result, fmt, artifact_reader(root, tenant_of_run_id(run_id), run_id))
    except ExportUnavailable as err:
        raise CairnError(str(err), "unavailable") from None


def write_report(data: bytes, run_id: str, fmt: str, output: str | None) -> str:
    """Write the file where `output` says (`-`: standard output; none: `<run>.<fmt>` here); its name."""
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return "-"
    path = Path(output or file_name(run_id, fmt))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return str(path)

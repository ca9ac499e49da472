"""The `report.save` activity: writes a finished report under Cairn's data directory.

The report also travels in the workflow result; the file is for people (`cairn report ID` and the
`status` query point at it). Writing is idempotent, so a retried activity leaves one file, not two.

Reports are kept per tenant: `<reports>/<file>` for the default tenant (where every report was before
tenants), `<reports>/tenants/<tenant>/<file>` for another (common/tenancy.py tenant_directory). A report
file name always ends in `.md`, so no default-tenant report can be, or sit inside, `tenants/`.

Must never: write outside the reports directory of the request's tenant, leave a half-written report
where a reader may find it, or accept a tenant that is not one (a non-retryable InvalidInput).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from common import errors
from common.models import SavedReport, SaveReport
from common.names import REPORT_SAVE
from common.tenancy import tenant_directory

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def report_file_name(workflow_id: str) -> str:
    """A file name for a run's report that no other run's can equal: a readable, bounded form of the id
    (any id, however long or odd) and a digest of the exact id, since `col/x` and `col_x` read alike."""
    readable = _UNSAFE.sub("_", workflow_id).strip("._")[:80] or "report"
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:12]
    return f"{readable}-{digest}.md"


class ReportActivities:
    def __init__(self, reports_dir: Path) -> None:
        self._dir = reports_dir

    def directory(self, tenant: str) -> Path:
        """Where `tenant`'s reports are written; ValueError for a tenant that is not one."""
        return self._dir / tenant_directory(tenant)

    @staticmethod
    def _write(directory: Path, request: SaveReport) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / report_file_name(request.workflow_id)
        # Write-then-rename, so a crash mid-write never leaves a half report behind.
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(request.markdown, encoding="utf-8")
        tmp.replace(path)
        return path

    @activity.defn(name=REPORT_SAVE)
    async def save(self, request: SaveReport) -> SavedReport:
        try:
            directory = self.directory(request.tenant)
        except ValueError as err:  # Not a tenant: the same request fails the same way every time.
            raise ApplicationError(str(err), type=errors.INVALID_INPUT, non_retryable=True) from None
        path = await asyncio.to_thread(self._write, directory, request)
        return SavedReport(path=str(path))

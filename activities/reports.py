"""The `report.save` activity: writes a finished report under Cairn's data directory.

The report also travels in the workflow result; the file is for people (`cairn report ID` and the
`status` query point at it). Writing is idempotent, so a retried activity leaves one file, not two.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from temporalio import activity

from common.models import SavedReport, SaveReport
from common.names import REPORT_SAVE

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

    def _write(self, request: SaveReport) -> Path:
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / report_file_name(request.workflow_id)
        # Write-then-rename, so a crash mid-write never leaves a half report behind.
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(request.markdown, encoding="utf-8")
        tmp.replace(path)
        return path

    @activity.defn(name=REPORT_SAVE)
    async def save(self, request: SaveReport) -> SavedReport:
        path = await asyncio.to_thread(self._write, request)
        return SavedReport(path=str(path))

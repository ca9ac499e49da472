"""The `report.save` activity: writes a finished report under Cairn's data directory.

The report also travels in the workflow result; the file is for people (`cairn report ID` and the
`status` query point at it). Writing is idempotent, so a retried activity leaves one file, not two.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from temporalio import activity

from common.models import SavedReport, SaveReport
from common.names import REPORT_SAVE

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ReportActivities:
    def __init__(self, reports_dir: Path) -> None:
        self._dir = reports_dir

    def _write(self, request: SaveReport) -> Path:
        self._dir.mkdir(parents=True, exist_ok=True)
        name = _UNSAFE.sub("_", request.workflow_id).strip("._") or "report"
        path = self._dir / f"{name}.md"
        # Write-then-rename, so a crash mid-write never leaves a half report behind.
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(request.markdown, encoding="utf-8")
        tmp.replace(path)
        return path

    @activity.defn(name=REPORT_SAVE)
    async def save(self, request: SaveReport) -> SavedReport:
        path = await asyncio.to_thread(self._write, request)
        return SavedReport(path=str(path))

"""The report as a download (markdown, HTML, PDF, DOCX) for the API's report route and the web app's buttons.

Why this exists: both routes answer with the same file for the same run, made by client/web/export.py,
with the run's artifacts read only from the caller's tenant's copy of that run. The caller has checked
the run's tenant already (`written_report` calls `owned`).

Must never: read an artifact through anything but the authenticated principal's tenant, or answer a
missing renderer with an empty file.
"""

from __future__ import annotations

from fastapi import Response

from client.server.app import Services
from client.server.auth import Principal
from client.server.problems import Problem
from client.web.export import (
    MEDIA_TYPES,
    ExportFormat,
    ExportUnavailable,
    artifact_reader,
    export_report,
    file_name,
)
from common.models import ResearchResult


async def export_response(
    services: Services, principal: Principal, result: ResearchResult, fmt: ExportFormat
) -> Response:
    """The report of `result` in `fmt` as an attachment named after the run."""
    reader = artifact_reader(services.sandbox_artifacts_root(), principal.tenant, result.workflow_id)
    try:
        body = await export_report(result, fmt, reader)
    except ExportUnavailable as err:
        raise Problem(501, str(err), code="export_unavailable") from None
    name = file_name(result.workflow_id, fmt)
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )

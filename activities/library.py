"""The `library.add` activity: a finished run's sources and findings join its tenant's library.

The library is a corpus scope of its own per tenant (`library:<tenant>`, common/tenancy.py), so it is
ranked with its own statistics and no search of one tenant's library can reach another's. What joins
it: every page the run read in full (copied whole from the run's archive, `run:<id>`, under its URL,
so a later run that reads the page again cites the same source) and each of the run's findings (its
summary, claims and the sources they cite, as `finding:<run id>/<step>`). A page read again by a later
run replaces the older text: the library holds the latest version of each source.

Idempotent: ingesting the same text under the same path writes nothing, so a retried activity does
no harm. Must never: write outside the library scope of the request's tenant, or accept a tenant that
is not one (a non-retryable InvalidInput).
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.corpus import Corpus
from common import errors
from common.models import Finding, LibraryAdd, LibraryAdded
from common.names import LIBRARY_ADD
from common.tenancy import library_scope

FINDING_PREFIX = "finding:"


def finding_text(finding: Finding) -> str:
    """A finding as a library document: what it says, then the sources each claim rests on."""
    by_id = {s.id: s for s in finding.sources}
    lines = [finding.summary, ""]
    for claim in finding.claims:
        cited = [by_id[i] for i in claim.source_ids if i in by_id]
        where = "; ".join(
            f"{s.title} ({s.url or s.path})" if s.title else str(s.url or s.path) for s in cited
        )
        lines.append(f"- {claim.text}" + (f" [{where}]" if where else ""))
    if finding.sources:
        lines += ["", "Sources:"] + [f"- {s.title} {s.url or s.path or ''}".rstrip() for s in finding.sources]
    return "\n".join(lines).strip()


class LibraryActivities:
    def __init__(self, corpus: Corpus) -> None:
        self._corpus = corpus

    @activity.defn(name=LIBRARY_ADD)
    async def add(self, request: LibraryAdd) -> LibraryAdded:
        try:
            scope = library_scope(request.tenant)
        except ValueError as err:
            raise ApplicationError(str(err), type=errors.INVALID_INPUT, non_retryable=True) from None
        archive = f"run:{request.workflow_id}"
        pages = 0
        after = ""
        while True:
            listed = await self._corpus.list_documents(archive, after=after)
            if not listed:
                break
            for document in listed:
                text = await self._corpus.read_text(archive, document.path)
                if text:
                    await self._corpus.ingest(document.path, document.title, text, scope=scope)
                    pages += 1
                activity.heartbeat(document.path)
            after = listed[-1].path
        for finding in request.findings:
            title = f"{finding.title} (run {request.workflow_id}: {request.question[:120]})"
            path = f"{FINDING_PREFIX}{request.workflow_id}/{finding.step_id}"
            await self._corpus.ingest(path, title, finding_text(finding), scope=scope)
        return LibraryAdded(pages=pages, findings=len(request.findings))

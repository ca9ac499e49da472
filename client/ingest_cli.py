"""`cairn ingest PATH... [--tenant T] [--json]` and `cairn ingest --search QUERY [--tenant T] [--limit N]`.

Why this exists: a person puts their own documents where the researcher's `corpus_search` tool finds
them, through the same store and the same passage splitting the tool reads (activities/corpus/), and
checks what a query finds. It needs no Temporal server: the corpus is SQLite in CAIRN_HOME, or the
PostgreSQL in DATABASE_URL. `--tenant` (default `default`) names whose documents these are: they go to
that tenant's corpus scope (common/tenancy.py), which only that tenant's runs search, and `--search`
reads that scope alone.

Only regular files that look like their suffix's format are read, each up to a cap: 50 MB
(activities/corpus/documents.py MAX_BYTES) unless CAIRN_INGEST_MAX_BYTES gives another number of bytes. A
FIFO, device, socket, binary file or oversized file is refused by name with the reason, and nothing of
it reaches the corpus.

Must never: stop at the first bad file (every other file is still ingested, and each failure is
reported by name), report a file as ingested when it was not, or print DATABASE_URL's password.
Exit codes: 0 all good, 1 a file failed or was refused or the store is unavailable, 2 a path that does
not exist or has a suffix we do not read, or a CAIRN_INGEST_MAX_BYTES that is not a positive number
(bad usage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from temporalio.exceptions import ApplicationError

from activities.corpus.documents import MAX_BYTES, max_bytes_from
from common.tenancy import DEFAULT_TENANT, corpus_scope, valid_tenant
from common.tool_models import CorpusResults, IngestReport


def _verb(report: IngestReport) -> str:
    if report.error is not None:
        return "failed"
    return "unchanged" if report.unchanged else "replaced" if report.replaced else "ingested"


async def ingest_paths(
    paths: list[Path], *, json_output: bool, max_bytes: int = MAX_BYTES, tenant: str = DEFAULT_TENANT
) -> tuple[list[IngestReport], int]:
    """Ingest every document under `paths` into `tenant`'s corpus, each at most `max_bytes`; returns the
    reports and the exit code."""
    from activities.corpus import open_corpus
    from activities.corpus.documents import iter_documents, read_document

    code = 0
    reports: list[IngestReport] = []
    scope = corpus_scope(tenant)
    corpus = open_corpus()
    try:
        for arg in paths:
            try:
                found = list(iter_documents([arg]))
            except (OSError, ValueError) as err:
                print(f"cairn ingest: {err}", file=sys.stderr)
                code = 2
                continue
            for path in found:
                try:
                    title, text = await asyncio.to_thread(read_document, path, max_bytes)
                except Exception as err:  # A broken file of any kind is that file's failure, not the run's.
                    # Named as given, not resolved: a symlink to /dev/zero is reported as the link.
                    error = f"{type(err).__name__}: {err}"
                    report = IngestReport(path=str(path.absolute()), passages=0, error=error)
                else:
                    report = await corpus.ingest(str(path.resolve()), title or path.stem, text, scope=scope)
                reports.append(report)
                if not json_output:
                    detail = report.error if report.error is not None else _passages(report.passages)
                    print(f"{_verb(report):>9}  {report.path} ({detail})", flush=True)
    finally:
        await corpus.close()
    if any(r.error is not None for r in reports):
        code = code or 1
    return reports, code


def _passages(n: int) -> str:
    return f"{n} passage" if n == 1 else f"{n} passages"


def _summary(reports: list[IngestReport]) -> str:
    counts = {
        verb: sum(_verb(r) == verb for r in reports)
        for verb in ("ingested", "replaced", "unchanged", "failed")
    }
    written = sum(r.passages for r in reports if r.error is None and not r.unchanged)
    parts = ", ".join(f"{n} {verb}" for verb, n in counts.items())
    return f"{len(reports)} documents: {parts}; {_passages(written)} written"


async def search(query: str, limit: int, tenant: str = DEFAULT_TENANT) -> CorpusResults:
    """What `tenant`'s researcher would find for `query`: a search of that tenant's corpus only."""
    from activities.corpus import open_corpus

    corpus = open_corpus()
    try:
        passages = await corpus.search(query, limit=limit, scope=corpus_scope(tenant))
        return CorpusResults(query=query, passages=passages)
    finally:
        await corpus.close()


def _render(results: CorpusResults) -> str:
    if not results.passages:
        return f"Nothing in the corpus matches {results.query!r}."
    lines = []
    for rank, passage in enumerate(results.passages, 1):
        lines.append(
            f"{rank}. {passage.title} — {passage.path} #{passage.position} (score {passage.score:.2f})"
        )
        snippet = " ".join(passage.text.split())
        lines.append(f"   {snippet[:300]}{'…' if len(snippet) > 300 else ''}")
    return "\n".join(lines)


async def _ingest(args: argparse.Namespace) -> int:
    if bool(args.paths) == (args.search is not None):
        print("cairn ingest: name one or more PATHs to ingest, or --search QUERY alone", file=sys.stderr)
        return 2
    try:
        max_bytes = max_bytes_from(os.environ)
    except ValueError as err:
        print(f"cairn ingest: {err}", file=sys.stderr)
        return 2
    try:
        if args.search is not None:
            results = await search(args.search, args.limit, args.tenant)
            print(results.model_dump_json(indent=2) if args.json else _render(results))
            return 0
        paths = [Path(p) for p in args.paths]
        reports, code = await ingest_paths(
            paths, json_output=args.json, max_bytes=max_bytes, tenant=args.tenant
        )
    except ApplicationError as err:  # The store is unavailable: nothing more can be done in this run.
        print(f"cairn ingest: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in reports], indent=2))
    else:
        print(_summary(reports))
    return code


def _tenant(value: str) -> str:
    """argparse's check of --tenant: a bad one is a usage error (exit 2) that says what a tenant is."""
    try:
        return valid_tenant(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_ingest_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ingest = subparsers.add_parser(
        "ingest",
        help="index your documents (text, markdown, HTML, PDF) for the researcher's corpus_search",
        description="Index documents into the corpus: SQLite in CAIRN_HOME, or PostgreSQL when "
        "DATABASE_URL is set. Directories are read recursively; re-ingesting a changed file "
        "replaces its passages. Only regular files are read, each at most 50 MB unless "
        "CAIRN_INGEST_MAX_BYTES says otherwise.",
    )
    ingest.add_argument("paths", nargs="*", metavar="PATH", help="files or directories to ingest")
    ingest.add_argument(
        "--search", metavar="QUERY", help="instead of ingesting, show the passages a query finds"
    )
    ingest.add_argument("--limit", type=int, default=5, help="passages --search shows (default 5)")
    ingest.add_argument(
        "--tenant",
        type=_tenant,
        default=DEFAULT_TENANT,
        help="whose documents: ingest into, or --search, this tenant's corpus (default: default)",
    )
    ingest.add_argument("--json", action="store_true", help="machine-readable output")
    ingest.set_defaults(handler=_ingest)

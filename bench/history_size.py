"""History size of a long research run: 10 steps, each reading two pages of 100 KB or more.

Why this exists: fetched pages must not bloat Temporal's history (the server caps a history at 50 MB
and slows down well before). Pages and other payloads above CAIRN_PAYLOAD_THRESHOLD_BYTES go to the
payload store and history keeps a reference. Target: the run's histories (the run and its ten step
workflows) stay under 1 MB together. Run: `python -m bench.history_size [--threshold BYTES]`; writes
bench/results/history_size.json. With `--threshold 0`-like huge values you see what history would hold
without the store.

Everything is real but the model: the dev server, SearxNG-shaped search and the pages over loopback
HTTP, trafilatura extraction, the SQLite archive and the file payload store.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType

from activities.corpus import SQLiteCorpus
from bench.results_io import publish
from client.api import CairnClient
from common.config import LLMConfig, TemporalConfig
from common.payload_store import DEFAULT_THRESHOLD_BYTES
from common.plugin import connect
from common.web_config import FetchConfig, SearchConfig
from testkit.dev_server import DevServer
from testkit.research_site import ResearchSite
from testkit.scripted_llm import ScriptedLLM
from worker import build_worker

RESULTS = Path(__file__).resolve().parent / "results" / "history_size.json"


async def measure(threshold: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        server = DevServer(db_file=home / "temporal.db").start()
        llm = ScriptedLLM().start()
        site = ResearchSite().start()
        try:
            # The plugin's converter, on this store: the client and the worker built on it share it.
            client = await connect(
                TemporalConfig.from_env({"TEMPORAL_ADDRESS": server.address}),
                env={"CAIRN_HOME": tmp, "CAIRN_PAYLOAD_THRESHOLD_BYTES": str(threshold)},
            )
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            async with build_worker(
                client,
                queue,
                LLMConfig(api_key="sk-bench", base_url=llm.base_url),
                home=home,
                search=SearchConfig(searxng_url=site.url),
                fetch=FetchConfig(allow_private=True),
                corpus=SQLiteCorpus(home / "corpus.sqlite3"),
            ):
                cairn = CairnClient(client, queue)
                started = time.monotonic()
                wid = await cairn.start(
                    "Ten steps of long pages [steps=10]",
                    auto_approve=True,
                    max_plan_iterations=0,
                    max_steps=10,
                )
                result = await cairn.result(wid)
                wall = time.monotonic() - started
            parent = await client.get_workflow_handle(wid).fetch_history()
            started_children = [
                e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
                for e in parent.events
                if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
            ]
            histories = [parent] + [
                await client.get_workflow_handle(c).fetch_history() for c in started_children
            ]
            sizes = [sum(e.ByteSize() for e in h.events) for h in histories]
            stored = list((home / "payloads").glob("*/*"))
            page_bytes = sum(len(site.article(int(u.rsplit("/", 1)[1])).encode()) for u in site.fetched())
            return {
                "steps": len(started_children),
                "pages_fetched": len(site.fetched()),
                "page_html_bytes_total": page_bytes,
                "smallest_page_html_bytes": min(
                    len(site.article(int(u.rsplit("/", 1)[1])).encode()) for u in site.fetched()
                ),
                "payload_threshold_bytes": threshold,
                "history_bytes_total": sum(sizes),
                "history_bytes_run": sizes[0],
                "history_bytes_largest_step": max(sizes[1:]),
                "events_total": sum(len(h.events) for h in histories),
                "payloads_in_store": len(stored),
                "payload_store_bytes": sum(p.stat().st_size for p in stored),
                "sources_in_report": len(result.sources),
                "wall_seconds": round(wall, 2),
            }
        finally:
            site.stop()
            llm.stop()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD_BYTES)
    args = parser.parse_args()
    publish(asyncio.run(measure(args.threshold)), RESULTS)


if __name__ == "__main__":
    main()

"""The researcher's working memory: what its tools returned, rendered for the model within a budget.

Tool activities return structured results (a page's full text, search hits, passages). The memory node
of the researcher graph turns each into the message the model reads: sources get stable ids ([S1],
[S2], ...) in the order they first appear, a fresh output is capped, and once the conversation outgrows
the step's context budget the oldest tool outputs are replaced by one-line summaries. The full texts
stay in the payload store and in the run's archive, where the `recall` tool finds them again.

Pure functions over plain dicts: this runs inside the workflow (deterministic, no I/O). Token counts
are estimates (four characters a token), which is what a budget needs: stable, cheap, conservative.
"""

from __future__ import annotations

from typing import Any

CHARS_PER_TOKEN = 4
SNIPPET_CHARS = 300
# A fresh tool output may take up to this share of the working memory.
FRESH_OUTPUT_SHARE = 3


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def message_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for m in messages:
        total += estimate_tokens(m.get("content") or "")
        for call in m.get("tool_calls") or []:
            total += estimate_tokens(str(call.get("args", "")))
    return total


def source_key(url: str | None, path: str | None) -> str:
    """Sources are the same when they name the same URL (fragment dropped) or the same document."""
    if url:
        return "url:" + url.split("#", 1)[0].rstrip("/")
    return "path:" + (path or "")


class SourceBook:
    """Hands out [S<n>] ids in first-seen order; the same URL or document keeps its id."""

    def __init__(self, sources: list[dict[str, Any]]) -> None:
        self.sources = list(sources)
        self._by_key = {s["key"]: s for s in self.sources}
        self.added: list[dict[str, Any]] = []

    def cite(self, *, title: str, url: str | None = None, path: str | None = None, via: str) -> str:
        key = source_key(url, path)
        found = self._by_key.get(key)
        if found is None:
            found = {
                "id": f"S{len(self.sources) + 1}",
                "key": key,
                "title": title,
                "url": url,
                "path": path,
                "via": via,
            }
            self.sources.append(found)
            self._by_key[key] = found
            self.added.append(found)
        elif via == "fetched" and found["via"] != "fetched":
            # A search hit that was then read in full: it counts as fetched from now on.
            found = dict(found, via="fetched", title=title or found["title"])
            self._replace(found)
        return str(found["id"])

    def _replace(self, source: dict[str, Any]) -> None:
        self.sources = [source if s["key"] == source["key"] else s for s in self.sources]
        self._by_key[source["key"]] = source
        self.added = [s for s in self.added if s["key"] != source["key"]] + [source]


def render(result: dict[str, Any], book: SourceBook, cap_chars: int) -> tuple[str, str]:
    """A tool result as (what the model reads now, the one-line summary that replaces it later)."""
    kind = result.get("kind")
    if kind == "page":
        sid = book.cite(
            title=result.get("title", ""), url=result["final_url"] or result["url"], via="fetched"
        )
        text = result.get("text", "")
        head = f"[{sid}] {result.get('title') or '(untitled)'} <{result['final_url'] or result['url']}>"
        shown = text[:cap_chars]
        cut = len(text) - len(shown)
        note = f"\n[... {cut} more characters archived; use recall to search them]" if cut > 0 else ""
        summary = (
            f"{head}: read in full earlier ({len(text)} characters, archived; use recall to search it). "
            f"It begins: {_snippet(text)}"
        )
        return f"{head}\n\n{shown}{note}", summary
    if kind == "search":
        lines, ids = [], []
        for hit in result.get("hits", []):
            sid = book.cite(title=hit.get("title", ""), url=hit["url"], via="searched")
            ids.append(sid)
            lines.append(f"[{sid}] {hit.get('title') or hit['url']} <{hit['url']}>\n{hit.get('snippet', '')}")
        withheld = int(result.get("withheld") or 0)
        # The model must know results were held back, or it takes "nothing found" for the web's answer.
        held = f" ({withheld} more withheld by this run's domain policy)" if withheld else ""
        if not lines:
            text = f"web search for {result.get('query')!r} ({result.get('backend')}): no results{held}."
            return text, text
        body = f"web search for {result.get('query')!r} ({result.get('backend')}){held}:\n\n" + "\n\n".join(
            lines
        )
        found = ", ".join(f"[{i}]" for i in ids)
        summary = f"web search for {result.get('query')!r} found {found} (fetch_url to read one)."
        return _capped(body, cap_chars), summary
    if kind == "mcp":
        tool = str(result.get("tool") or "the MCP tool")
        text = str(result.get("text") or "")
        body = f"{tool} answered:\n\n{text}"
        return _capped(body, cap_chars), f"{tool} answered: {_snippet(text)}"
    if kind == "passages":
        archive = result.get("archive", False)
        lines, ids = [], []
        for p in result.get("passages", []):
            shelved = bool(p.get("library"))
            if shelved and str(p["path"]).startswith(("http://", "https://")):
                sid = book.cite(title=p.get("title", ""), url=p["path"], via="library")
            elif shelved:
                sid = book.cite(title=p.get("title", ""), path=p["path"], via="library")
            elif archive:
                sid = book.cite(title=p.get("title", ""), url=p["path"], via="fetched")
            else:
                sid = book.cite(title=p.get("title", ""), path=p["path"], via="corpus")
            ids.append(sid)
            shelf = ", from the library of earlier runs" if shelved else ""
            lines.append(
                f"[{sid}] {p.get('title') or p['path']} ({p['path']}, passage {p['position']}{shelf})\n{p['text']}"
            )
        where = "pages read earlier in this run" if archive else "the user's documents"
        if any(p.get("library") for p in result.get("passages", [])):
            where += " and the library of earlier runs"
        if not lines:
            text = f"search of {where} for {result.get('query')!r}: nothing matched."
            return text, text
        body = f"search of {where} for {result.get('query')!r}:\n\n" + "\n\n".join(lines)
        summary = f"search of {where} for {result.get('query')!r} found {', '.join(f'[{i}]' for i in ids)}."
        return _capped(body, cap_chars), summary
    if kind == "error":
        text = f"tool error ({result.get('type')}): {result.get('message')}"
        return text, text
    text = f"unrecognised tool result: {str(result)[:200]}"
    return text, text


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat[:SNIPPET_CHARS] + ("..." if len(flat) > SNIPPET_CHARS else "")


def _capped(text: str, cap_chars: int) -> str:
    return text if len(text) <= cap_chars else text[:cap_chars] + "\n[... cut to fit working memory]"


def remember(
    messages: list[dict[str, Any]], sources: list[dict[str, Any]], context_tokens: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render fresh tool results and compact old ones. Returns (changed messages, sources as now)."""
    book = SourceBook(sources)
    cap_chars = context_tokens * CHARS_PER_TOKEN // FRESH_OUTPUT_SHARE
    current = list(messages)
    changed: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(current):
        if m.get("role") == "tool" and "result" in m:
            content, summary = render(m["result"], book, cap_chars)
            fresh = {k: v for k, v in m.items() if k != "result"}
            fresh.update(content=content, summary=summary)
            current[i] = changed[m["id"]] = fresh
    # Oldest tool outputs give way first; the latest round stays whole if it can.
    for i, m in enumerate(current):
        if message_tokens(current) <= context_tokens:
            break
        if m.get("role") == "tool" and not m.get("compacted") and m.get("summary"):
            compact = dict(m, content=m["summary"], compacted=True)
            current[i] = changed[m["id"]] = compact
    return list(changed.values()), book.sources

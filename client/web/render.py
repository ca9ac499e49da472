"""A run's report as HTML a browser may show: markdown rendered, then sanitised, citations linked.

Why this exists: the report is the model's text, and it quotes the question, step titles and page
titles; any of them may carry markup meant to run in a reader's browser. Three layers stop it:
markdown-it renders with raw HTML off (a `<script>` in the markdown comes out as text) and refuses
javascript:/data: links; nh3 (the ammonia sanitiser) then keeps only an allow-list of tags and
attributes and http(s)/mailto/relative links; and the page's Content-Security-Policy allows no inline
script at all. Citations `[n]` become links to `#source-n` only for numbers the run really has.

The numbered Sources and the Artifacts list are taken out of the markdown and shown from the run's
structured result instead (each source with an id to jump to, each image artifact inline).

Must never: let raw HTML, an event handler attribute, a script or a javascript: URL from the report
through; invent a citation link for a number the run has no source for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

from activities.library import FINDING_PREFIX
from common.models import Source

_TAGS: Final = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "a", "em", "strong", "code", "pre",
    "blockquote", "hr", "br", "table", "thead", "tbody", "tr", "th", "td", "sup", "del",
}  # fmt: skip
_ATTRIBUTES: Final = {"a": {"href", "class"}, "ol": {"start"}}
_SCHEMES: Final = {"http", "https", "mailto"}
_CITATION: Final = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SAFE_URL: Final = re.compile(r"^https?://[^\s<>\"'`\\]+$", re.IGNORECASE)
# An artifact line as workflows/reporting.py writes it: `- name (size bytes, type) from "Step": path`.
_ARTIFACT: Final = re.compile(r"^- (?P<name>.+?) \((?P<size>\d+) bytes, (?P<type>[^)]+)\) from ")
_UNESCAPE: Final = re.compile(r"\\(.)")
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int
    media_type: str

    @property
    def image(self) -> bool:
        return self.media_type in ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class RenderedReport:
    html: str
    sources: list[Source]
    artifacts: list[Artifact]


def safe_url(url: str | None) -> str | None:
    """`url` when it is a plain http(s) URL a link may point at, else None."""
    return url if url and len(url) <= 2000 and _SAFE_URL.match(url) else None


def source_href(source: Source) -> str | None:
    """Where a source opens: a web page at its URL; one of the tenant's documents at its page here; a
    finding from the tenant's library at the earlier run that found it; else nowhere."""
    url = safe_url(source.url)
    if url or not source.path:
        return url
    if source.via != "library":
        return f"/documents?path={quote(source.path, safe='')}"
    if source.path.startswith(FINDING_PREFIX):
        run_id = source.path[len(FINDING_PREFIX) :].split("/", 1)[0]
        return f"/runs/{quote(run_id, safe='')}" if run_id else None
    return None


def _cut_section(markdown: str, heading: str) -> tuple[str, str]:
    """The markdown without its last `## heading` section, and that section's body ('' if none)."""
    marker = f"\n## {heading}\n"
    at = markdown.rfind(marker)
    if at < 0:
        return markdown, ""
    rest = markdown[at + len(marker) :]
    following = re.search(r"^## ", rest, flags=re.MULTILINE)
    body, after = (rest[: following.start()], rest[following.start() :]) if following else (rest, "")
    return markdown[:at] + "\n" + after, body


def _artifacts(section: str) -> list[Artifact]:
    found = []
    for line in section.splitlines():
        match = _ARTIFACT.match(line.strip())
        if match:
            name = _UNESCAPE.sub(r"\1", match.group("name"))
            media = _UNESCAPE.sub(r"\1", match.group("type")).strip()
            found.append(Artifact(name=name, size=int(match.group("size")), media_type=media))
    return found


def _link_citations(tokens: list[Token], known: set[str]) -> None:
    """Each `[n]` (or `[n, m]`) in text naming known sources becomes links to them, in place."""
    for block in tokens:
        if block.type != "inline" or not block.children:
            continue
        children: list[Token] = []
        inside_link = 0
        for child in block.children:
            inside_link += child.type == "link_open"
            inside_link -= child.type == "link_close"
            if child.type != "text" or inside_link or not _CITATION.search(child.content):
                children.append(child)
                continue
            position = 0
            for match in _CITATION.finditer(child.content):
                numbers = [n.strip() for n in match.group(1).split(",")]
                if not all(n in known for n in numbers):
                    continue
                if match.start() > position:
                    children.append(_text(child.content[position : match.start()]))
                links = ", ".join(f'<a class="cite" href="#source-{n}">{n}</a>' for n in numbers)
                html = Token("html_inline", "", 0)
                html.content = f"<sup>[{links}]</sup>"
                children.append(html)
                position = match.end()
            if position < len(child.content):
                children.append(_text(child.content[position:]))
        block.children = children


def _text(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token


def sanitise(html: str) -> str:
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes=_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def render_report(markdown: str, sources: list[Source]) -> RenderedReport:
    body, _ = _cut_section(markdown, "Sources") if sources else (markdown, "")
    body, artifacts_section = _cut_section(body, "Artifacts")
    env: dict[str, Any] = {}
    tokens = _MARKDOWN.parse(body, env)
    _link_citations(tokens, {s.id for s in sources})
    html = _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, env)
    return RenderedReport(html=sanitise(html), sources=sources, artifacts=_artifacts(artifacts_section))

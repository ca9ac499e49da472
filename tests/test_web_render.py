"""The report as the web app renders it: markdown in, sanitised HTML out, citations linked only to
sources the run has, the plan editor's buttons doing what they say. Pure functions; the browser tests
(tests/test_web_app.py) show the same in Chromium."""

from __future__ import annotations

from lxml.html import fromstring
from starlette.datastructures import FormData, UploadFile

from client.web import plan_editor
from client.web.render import render_report, safe_url, source_href
from common.models import Source
from workflows.reporting import artifacts_section, sources_section

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    "[click](javascript:alert(1))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![pixel](https://tracker.example/p.png)",
    '<svg onload="alert(1)"></svg>',
    '<iframe src="https://evil.example"></iframe>',
]


def test_raw_html_scripts_handlers_and_script_links_never_survive() -> None:
    markdown = "# Report <script>x</script>\n\n" + "\n\n".join(HOSTILE) + "\n"
    html = render_report(markdown, []).html
    tree = fromstring(f"<div>{html}</div>")
    elements = list(tree.iter())
    assert not [e.tag for e in elements if e.tag in ("script", "img", "svg", "iframe", "style", "object")]
    assert not [a for e in elements for a in e.attrib if a.lower().startswith("on") or a == "style"]
    links = [e.get("href", "") for e in elements if e.tag == "a"]
    assert all(link.startswith(("https:", "http:", "mailto:", "#")) for link in links), links
    # Shown as text, not dropped silently: a reader sees what the model wrote.
    assert '<img src=x onerror="alert(1)">' in tree.text_content()
    assert "<script>alert(1)</script>" in tree.text_content()


def test_citations_link_only_to_sources_the_run_has() -> None:
    sources = [Source(id="1", title="One", url="https://one.example"), Source(id="2", title="Two")]
    markdown = "Ice flows [1]. Both say so [1, 2]. Nobody said [7]. `code [1]` stays code.\n"
    html = render_report(markdown + sources_section(sources), sources).html
    assert html.count('href="#source-1"') == 2 and html.count('href="#source-2"') == 1
    assert "[7]" in html and "#source-7" not in html
    assert "<code>code [1]</code>" in html
    assert "Sources" not in html  # The numbered list is shown from the run's sources instead.


def test_artifacts_are_read_from_their_section_and_taken_out_of_the_text() -> None:
    from common.models import Finding
    from common.sandbox_models import Artifact

    finding = Finding(
        step_id="s4",
        title="Compute",
        summary="",
        artifacts=[Artifact(name="squares_[1].png", size=2048, media_type="image/png", path="/x/y")],
    )
    rendered = render_report("# R\n\nText.\n" + artifacts_section([finding]), [])
    assert [(a.name, a.size, a.image) for a in rendered.artifacts] == [("squares_[1].png", 2048, True)]
    assert "Artifacts" not in rendered.html


def test_only_plain_http_urls_become_links() -> None:
    assert safe_url("https://a.example/x?y=1") == "https://a.example/x?y=1"
    for bad in (
        "javascript:alert(1)",
        "data:text/html,x",
        'https://a.example/"onmouseover=x',
        "//a.example",
        None,
    ):
        assert safe_url(bad) is None


def _form(rows: list[tuple[str, str]], op: str) -> FormData:
    fields: list[tuple[str, str | UploadFile]] = [("rows", str(len(rows))), ("op", op)]
    for i, (step_id, title) in enumerate(rows):
        fields += [(f"id_{i}", step_id), (f"title_{i}", title), (f"kind_{i}", "research")]
    return FormData(fields)


def test_each_source_opens_where_it_came_from() -> None:
    def href(**fields: str) -> str | None:
        return source_href(Source(id="1", **fields))

    assert href(url="https://example.org/a?b=1", via="fetched") == "https://example.org/a?b=1"
    assert href(url="javascript:alert(1)", via="fetched") is None
    # One of the tenant's documents: its page here, the path quoted whole (a '&' or '#' stays in it).
    assert (
        href(path="upload:notes & plans#2.md", via="corpus")
        == "/documents?path=upload%3Anotes%20%26%20plans%232.md"
    )
    # A finding from the library: the earlier run that found it; another library path: nowhere.
    assert href(path="finding:acme.research-1a2b/s2", via="library") == "/runs/acme.research-1a2b"
    assert href(path="finding:", via="library") is None
    assert href(path="upload:notes.md", via="library") is None
    assert href(url="https://example.org/old", via="library") == "https://example.org/old"


def test_the_plan_editor_moves_deletes_and_adds_without_losing_what_was_typed() -> None:
    rows = [("s1", "First"), ("s2", "Second"), ("s3", "Third, typed but unsaved")]
    moved, op = plan_editor.apply(_form(rows, "up:2"))
    assert op == "up" and [r["title"] for r in moved] == ["First", "Third, typed but unsaved", "Second"]
    deleted, _ = plan_editor.apply(_form(rows, "delete:0"))
    assert [r["id"] for r in deleted] == ["s2", "s3"]
    added, _ = plan_editor.apply(_form(rows, "add"))
    assert len(added) == 4 and added[-1]["id"] is None
    steps, errors, general = plan_editor.specs([*added[:3], {**added[3], "title": "  "}])
    assert len(steps) == 3 and errors == {3: "a step title is empty"} and general is None
    assert plan_editor.reason_of("step s2 has already run and cannot be changed", added)[0] == {
        1: "step s2 has already run and cannot be changed"
    }
    assert plan_editor.specs([])[2] == "A plan needs at least one step."

"""The "What changed since" section, computed from two runs' structured findings (workflows/living.py):
new, changed and no-longer-supported claims, new and vanished sources, hostile text escaped, and the
planner's view of an earlier run."""

from __future__ import annotations

from common.models import ChatMessage, Claim, Finding, PriorRun, Source
from workflows.living import SECTION_TITLE, compare, what_changed_section, with_prior

LAW = Source(id="1", title="AI Act text", url="https://eur-lex.example/ai-act")
GUIDE = Source(id="2", title="Commission guidance", url="https://ec.example/guidance")
BLOG = Source(id="3", title="A blog", url="https://blog.example/post")
NEWS = Source(id="4", title="News of the week", url="https://news.example/week")


def finding(sources: list[Source], *claims: tuple[str, list[str]]) -> Finding:
    return Finding(
        step_id="s1",
        title="Regulation",
        summary="What the rules say.",
        sources=sources,
        claims=[Claim(text=text, source_ids=ids) for text, ids in claims],
    )


EARLIER = [
    finding(
        [LAW, GUIDE, BLOG],
        ("General-purpose models must publish a training summary.", ["1"]),
        ("Fines reach 7% of turnover.", ["1"]),
        ("The guidance is due in May.", ["2"]),
        ("Open models are exempt.", ["3"]),
    )
]
NOW = [
    finding(
        [LAW, GUIDE, NEWS],
        ("general-purpose models must publish a training summary", ["1"]),  # the same, reworded trivially
        ("Fines reach 3% of turnover.", ["1"]),  # the same source says something else
        ("The guidance was published in July.", ["2"]),  # changed too
        ("The AI Office opened in Brussels.", ["1"]),  # new (its source's earlier claims are taken)
    ),
    finding([NEWS], ("Member states named their authorities.", ["4"])),
]
PRIOR = PriorRun(
    workflow_id="acme.research-1",
    question="EU AI rules?",
    finished_at="2026-11-20T08:00:00+00:00",
    findings=EARLIER,
)


def test_claims_are_compared_by_what_they_say_and_the_sources_they_cite() -> None:
    changes = compare(EARLIER, NOW)
    assert [s.url for s in changes.new_sources] == ["https://news.example/week"]
    assert [s.url for s in changes.gone_sources] == ["https://blog.example/post"]
    assert changes.kept_claims == 1
    assert changes.changed_claims == [
        ("Fines reach 7% of turnover.", "Fines reach 3% of turnover."),
        ("The guidance is due in May.", "The guidance was published in July."),
    ]
    assert changes.new_claims == [
        "The AI Office opened in Brussels.",
        "Member states named their authorities.",
    ]
    assert changes.unsupported_claims == [("Open models are exempt.", "its sources were not found again")]


def test_an_earlier_claim_whose_source_was_read_again_but_says_nothing_of_it() -> None:
    now = [finding([LAW, GUIDE], ("Fines reach 7% of turnover.", ["1"]))]
    changes = compare([finding([GUIDE], ("The guidance is due in May.", ["2"]))], now)
    assert changes.unsupported_claims == [
        ("The guidance is due in May.", "its sources were read again but no longer state it")
    ]
    assert changes.new_claims == ["Fines reach 7% of turnover."]


def test_the_section_names_the_date_and_every_difference() -> None:
    section = what_changed_section(PRIOR, NOW)
    assert section.startswith(f"\n\n## {SECTION_TITLE} 2026-11-20 08:00 UTC\n")
    for heading in ("New sources", "New claims", "Changed claims", "Earlier claims no longer supported"):
        assert f"### {heading}" in section
    assert "<https://news.example/week>" in section
    assert "- was: Fines reach 7% of turnover.\n  now: Fines reach 3% of turnover." in section
    assert "- Open models are exempt. (its sources were not found again)" in section
    assert "### Earlier sources not found again\n\n- A blog <https://blog.example/post>" in section
    assert section.endswith("\n\n1 earlier claim was found again unchanged.\n")
    assert "Nothing changed" not in section


def test_the_same_findings_again_is_nothing_changed() -> None:
    section = what_changed_section(PRIOR, EARLIER)
    assert "Nothing changed: the same 4 claims rest on the same sources." in section
    assert "###" not in section


def test_hostile_text_from_sources_stays_text() -> None:
    hostile = Source(
        id="1", title="[click](javascript:alert(1)) <script>x</script>", url="javascript:alert(1)"
    )
    section = what_changed_section(PRIOR, [finding([hostile], ("# Heading\n- injected [1]", ["1"]))])
    # Escaped as markdown text: no link, no tag, no heading or bullet of its own, no autolink.
    assert "- \\[click\\](javascript:alert(1)) \\<script\\>x\\</script\\> javascript:alert(1)" in section
    assert "- \\# Heading - injected \\[1\\]" in section
    assert "\n# Heading" not in section and "<javascript:" not in section


def test_the_planner_is_shown_the_earlier_findings() -> None:
    messages = [
        ChatMessage(role="system", content="plan"),
        ChatMessage(role="user", content="Research question: q"),
    ]
    shown = with_prior(messages, PRIOR)
    assert shown[0] == messages[0]
    assert shown[1].content.startswith(
        "Research question: q\n\nAn earlier run (finished 2026-11-20 08:00 UTC)"
    )
    assert "Fines reach 7% of turnover." in shown[1].content and "eur-lex.example" in shown[1].content
    assert with_prior(messages, None) == messages

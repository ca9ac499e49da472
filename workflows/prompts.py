"""Prompts for the planner, the plan reviewer, the step agents and the reporter.

Pure functions of their arguments: workflows build messages here, so a prompt must never read a clock,
the environment or a file. Changing a prompt changes the activity input of new runs only; histories of
old runs still replay because activity inputs are not compared on replay.

Every system prompt opens with a fixed first line ("You are Cairn's planner.") so that logs, traces and
the scripted test server can tell the roles apart.
"""

from __future__ import annotations

from common.models import MAX_CLARIFYING_QUESTIONS, ChatMessage, Clarification, Finding, Plan

PLANNER_HEADER = "You are Cairn's planner."
CLARIFIER_HEADER = "You are Cairn's clarifier."
REVIEWER_HEADER = "You are Cairn's plan reviewer."
RESEARCHER_HEADER = "You are Cairn's researcher."
CODER_HEADER = "You are Cairn's coder."
REPORTER_HEADER = "You are Cairn's reporter."
CHECKER_HEADER = "You are Cairn's fact checker."

_PLAN_TASK = (
    "Give each step a short imperative title, a kind (research, or code only for a step that needs "
    "computation, data processing or charts) and a description of what to find out or compute."
)


def clarify_messages(question: str, always: bool) -> list[ChatMessage]:
    """Before planning: the questions, if any, whose answers would change the plan."""
    when = (
        "Ask at least one question"
        if always
        else "Ask only if the question is ambiguous in a way that would change the plan; otherwise ask none"
    )
    return [
        ChatMessage(
            role="system",
            content=(
                f"{CLARIFIER_HEADER}\nBefore a research plan is drafted, you may ask the person who asked "
                f"the research question up to {MAX_CLARIFYING_QUESTIONS} short questions, each on what "
                f"they mean or want (scope, period, place, depth). {when}."
            ),
        ),
        ChatMessage(role="user", content=f"Research question: {question}"),
    ]


def clarified(clarification: Clarification | None) -> str:
    """The clarifying questions and the person's answer, for the planner's context ('' for none)."""
    if clarification is None or not clarification.questions:
        return ""
    questions = "\n".join(f"- {q}" for q in clarification.questions)
    answer = clarification.answer or "(no answer was given; plan for the most likely meaning)"
    return f"\n\nClarifying questions asked before planning:\n{questions}\nThe person's answer: {answer}"


def plan_messages(
    question: str, max_steps: int, clarification: Clarification | None = None
) -> list[ChatMessage]:
    return [
        ChatMessage(
            role="system",
            content=(
                f"{PLANNER_HEADER}\nBreak the research question into at most {max_steps} "
                f"independent steps that together answer it well. {_PLAN_TASK} Say briefly why this "
                "plan answers the question."
            ),
        ),
        ChatMessage(role="user", content=f"Research question: {question}{clarified(clarification)}"),
    ]


def revise_messages(
    question: str, plan: Plan, feedback: str, max_steps: int, clarification: Clarification | None = None
) -> list[ChatMessage]:
    return [
        ChatMessage(
            role="system",
            content=(
                f"{PLANNER_HEADER}\nRevise the plan following the person's feedback; keep at most "
                f"{max_steps} steps. {_PLAN_TASK} To keep or reword one of the current steps, give its "
                "id; a new step has none."
            ),
        ),
        ChatMessage(
            role="user",
            content=(
                f"Research question: {question}{clarified(clarification)}\n\n"
                f"Current plan (version {plan.version}):\n"
                f"{render_steps(plan)}\n\nFeedback from the person: {feedback}"
            ),
        ),
    ]


def review_messages(
    question: str,
    plan: Plan,
    findings: list[Finding],
    max_new_steps: int,
    clarification: Clarification | None = None,
) -> list[ChatMessage]:
    return [
        ChatMessage(
            role="system",
            content=(
                f"{REVIEWER_HEADER}\nJudge whether the findings cover the question, and say why. "
                f"Where they do not, propose at most {max_new_steps} new steps to fill the gaps "
                f"(none when coverage is sufficient). {_PLAN_TASK}"
            ),
        ),
        ChatMessage(
            role="user",
            content=(
                f"Research question: {question}{clarified(clarification)}\n\n"
                f"Plan (version {plan.version}):\n"
                f"{render_steps(plan)}\n\nFindings:\n{render_findings(findings)}"
            ),
        ),
    ]


def step_task(question: str, title: str, description: str, context: str) -> str:
    """A step as its agent is given it: the question, the step, and what earlier steps found."""
    body = f"Research question: {question}\n\nYour step: {title}"
    if description:
        body += f"\nDetails: {description}"
    if context:
        body += f"\n\nWhat earlier steps found:\n{context}"
    return body


def step_messages(question: str, kind: str, title: str, description: str, context: str) -> list[ChatMessage]:
    header = CODER_HEADER if kind == "code" else RESEARCHER_HEADER
    body = step_task(question, title, description, context)
    return [
        ChatMessage(
            role="system",
            content=(
                f"{header}\nCarry out one step of a research plan and write a concise, factual "
                "finding in markdown. Say plainly what you could not establish."
            ),
        ),
        ChatMessage(role="user", content=body),
    ]


def researcher_messages(task: str) -> list[dict[str, str]]:
    """The researcher agent's opening messages (plain dicts: they live in the LangGraph state); `task`
    is the step as `step_task` writes it."""
    return [
        {
            "id": "system",
            "role": "system",
            "content": (
                f"{RESEARCHER_HEADER}\nCarry out one step of a research plan with your tools: web search "
                "(where offered), reading pages, searching the user's documents, and recalling pages "
                "read earlier in this run. "
                "Search, then read the most promising sources in full before you conclude. Every "
                "source you see has an id like [S3]; keep track of which source says what. When you "
                "have enough, answer without calling a tool and a finding will be written from your "
                "notes. Say plainly what you could not establish."
            ),
        },
        {"id": "task", "role": "user", "content": task},
    ]


def finding_messages(task: str, notes: str, sources: str, problem: str = "") -> list[ChatMessage]:
    """Ask the researcher to turn its notes into a finding: a summary and claims tied to sources.
    `task` is the step as the researcher was given it (question, step, context)."""
    user = f"{task}\n\nYour notes:\n{notes}\n\nSources you may cite:\n{sources or '(none)'}"
    if problem:
        user += f"\n\nYour previous answer was not valid: {problem}. Answer again."
    return [
        ChatMessage(
            role="system",
            content=(
                f"{RESEARCHER_HEADER}\nWrite the finding of your research step: a summary of a few "
                "sentences of markdown, and the factual claims it rests on, each naming the ids of the "
                "sources that support it (only sources listed in the notes)."
            ),
        ),
        ChatMessage(role="user", content=user),
    ]


def code_messages(question: str, title: str, description: str, context: str) -> list[ChatMessage]:
    body = step_task(question, title, description, context)
    return [
        ChatMessage(
            role="system",
            content=(
                f"{CODER_HEADER}\nWrite one self-contained Python 3 program that carries out the step. "
                "It runs in a sandbox with numpy, pandas and matplotlib, no network and a time limit. "
                "Print the results that matter; save charts and tables into the folder `out/`. "
                "Answer with the program in one ```python fenced block."
            ),
        ),
        ChatMessage(role="user", content=body),
    ]


def code_fix_message(program_reply: str, outcome: str) -> list[ChatMessage]:
    return [
        ChatMessage(role="assistant", content=program_reply),
        ChatMessage(
            role="user",
            content=f"The program failed: {outcome}\nFix it and answer with the whole corrected program "
            "in one ```python fenced block.",
        ),
    ]


def code_summary_messages(question: str, title: str, code: str, outcome: str) -> list[ChatMessage]:
    return [
        ChatMessage(
            role="system",
            content=(
                f"{CODER_HEADER}\nSummarize what the program established for the step, as a concise, "
                "factual finding in markdown. Mention the files it produced. Say plainly what failed."
            ),
        ),
        ChatMessage(
            role="user",
            content=f"Research question: {question}\n\nYour step: {title}\n\nProgram:\n```python\n{code}\n```"
            f"\n\nProgram output:\n{outcome}",
        ),
    ]


def report_messages(question: str, findings: list[Finding]) -> list[ChatMessage]:
    return [
        ChatMessage(
            role="system",
            content=(
                f"{REPORTER_HEADER}\nWrite a well-structured markdown report that answers the "
                "question from the findings alone. Cite sources as [n] using the numbers given; "
                "do not invent sources. Open with a title line starting with '# '."
            ),
        ),
        ChatMessage(
            role="user",
            content=f"Research question: {question}\n\nFindings:\n{render_findings(findings)}",
        ),
    ]


def contradiction_messages(question: str, earlier: list[str], now: list[str]) -> list[ChatMessage]:
    """For a run with a predecessor: which of its new claims contradict which of the earlier run's
    claims. Claims are numbered E1.. and N1.. and one claim is on each line (newlines inside a claim,
    which came from a model, are flattened so a claim cannot forge another's number)."""

    def listed(prefix: str, claims: list[str]) -> str:
        return "\n".join(f"{prefix}{i}: {' '.join(c.split())}" for i, c in enumerate(claims, 1))

    return [
        ChatMessage(
            role="system",
            content=(
                f"{CHECKER_HEADER}\nThe same research question was researched twice. Compare the claims "
                "of the earlier run with the new claims of this run and name each pair that cannot both "
                "be true (one affirms what the other denies, or they give incompatible figures, dates or "
                "directions for the same thing). A claim that only adds detail, narrows, or is about "
                "something else is not a contradiction. Name none when there are none; never pair a new "
                "claim with more than one earlier claim."
            ),
        ),
        ChatMessage(
            role="user",
            content=(
                f"Research question: {question}\n\nEarlier claims:\n{listed('E', earlier)}\n\n"
                f"New claims of this run:\n{listed('N', now)}"
            ),
        ),
    ]


def render_steps(plan: Plan) -> str:
    return "\n".join(
        f"{i}. {s.id} [{s.kind}] {s.title} ({s.status})" + (f": {s.description}" if s.description else "")
        for i, s in enumerate(plan.steps, 1)
    )


def render_findings(findings: list[Finding]) -> str:
    if not findings:
        return "(none)"
    parts = []
    for f in findings:
        cites = ", ".join(f"[{s.id}] {s.title or s.url or s.path}" for s in f.sources)
        claims = "".join(f"\n- {c.text}" + "".join(f" [{sid}]" for sid in c.source_ids) for c in f.claims)
        parts.append(
            f"## {f.title}\n{f.summary}"
            + (f"\nClaims:{claims}" if claims else "")
            + (f"\nSources: {cites}" if cites else "")
        )
    return "\n\n".join(parts)

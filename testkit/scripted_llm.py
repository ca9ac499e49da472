"""A scripted OpenAI-compatible chat server for tests and benchmarks: real HTTP, deterministic answers,
and the manners of a real provider.

The real client code (langchain-openai over httpx) talks to it exactly as it would to a provider, so
retries, status codes, `Retry-After` and token accounting are exercised for real. It listens on loopback
only. Run standalone with `python -m testkit.scripted_llm --port 8099`.

**The form of an answer follows the request, as a provider's does, never Cairn's prompt text**:
- JSON of the given schema only when `response_format` asks for `json_schema` (a strict schema that OpenAI
  would refuse gets OpenAI's 400); a JSON object when it asks for `json_object` (and, like OpenAI, only
  when a message mentions JSON); a JSON object with chatter around it when the prompt itself carries a
  JSON Schema in a fenced block, as a small model does when told the format in words; prose otherwise;
- tool calls only when tools are offered; a model name it does not serve gets a 404;
- OpenAI's reasoning models (o1, o3, o4-mini, gpt-5) refuse a temperature other than 1 and `max_tokens`,
  and other models refuse `reasoning_effort`.
A `Provider` profile makes it a weaker server: one that refuses `json_schema`, or `response_format`
altogether, or tools; one whose tool calls come several to a message or with broken arguments.

The *content* is scripted per role (a plan for the planner, a finding for the researcher writing up its
step), and question markers steer it: `[steps=N]` sets the plan's size, `[code]` adds a code step,
`[replan=K]` makes the reviewer ask for one more step K times, `[ambiguous]` makes the clarifier ask
two questions (it asks none otherwise). The fact checker pairs claims that say the same of the same
thing with opposite stances (one negated, or `advancing` against `retreating`). A scripted answer is fitted to the
schema a request carries, as constrained decoding would; `conformed` counts the answers that needed it.
Faults and answers scripted with `fail_next` and `answer_next` are served as they are (a misbehaving
server), and a `chooser` (testkit/chaos.py) may decide a fault for any other request.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit import processes
from testkit.loopback import LoopbackServer, QuietHandler

Reply = Callable[[list[dict[str, str]]], str]
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)", re.IGNORECASE)
_FENCED_JSON = re.compile(r"```json\s*\n(.*?)\n```", re.DOTALL)
_SYSTEM_ROLES = ("system", "developer")


def role_of(messages: list[dict[str, Any]]) -> str:
    """Which Cairn role sent this request, from the fixed first line of its system prompt (content is
    scripted per role). The researcher writing up its finding counts as "finding"."""
    system = next((str(m["content"]) for m in messages if m.get("role") in _SYSTEM_ROLES), "")
    for role in ("planner", "clarifier", "plan reviewer", "fact checker", "researcher", "coder", "reporter"):
        if system.startswith(f"You are Cairn's {role}."):
            if role == "researcher" and "Write the finding of your research step" in system:
                return "finding"
            return role.split(" ")[-1]
    return "other"


def _user_text(messages: list[dict[str, Any]]) -> str:
    return next((str(m["content"]) for m in messages if m.get("role") == "user"), "")


def _finding_reply(text: str) -> str:
    """The researcher's finding: one claim per source it may cite (at most four), citing it."""
    step = re.search(r"Your step: (.*)", text)
    listed = re.findall(r"^\[(S\d+)\] (.*)$", text.split("Sources you may cite:", 1)[-1], flags=re.MULTILINE)
    claims = [{"text": f"{title} bears on the step.", "sources": [sid]} for sid, title in listed[:4]]
    summary = f"Finding for '{step.group(1) if step else 'the step'}': {len(listed)} sources consulted."
    return json.dumps({"summary": summary, "claims": claims})


# The checker's notion of saying the opposite: a negation, or one word of these pairs for the other.
_NEGATIONS = frozenset({"not", "no", "never", "none"})
_OPPOSITE_PAIRS = (
    ("advancing", "retreating"),
    ("advanced", "retreated"),
    ("rose", "fell"),
    ("rising", "falling"),
    ("increased", "decreased"),
    ("grew", "shrank"),
    ("approved", "rejected"),
    ("open", "closed"),
)
# Each word of a pair as the pair's first word and its pole (0 the first, 1 the second).
_OPPOSITE_OF = {word: (pair[0], pole) for pair in _OPPOSITE_PAIRS for pole, word in enumerate(pair)}


def _stance(claim: str) -> tuple[tuple[str, ...], int]:
    """A claim as the words it is about and whether it affirms (0) or denies (1) them."""
    words, polarity = [], 0
    for word in re.findall(r"[a-z0-9']+", claim.lower()):
        if word in _NEGATIONS or word.endswith("n't"):
            polarity ^= 1
            continue
        canonical, pole = _OPPOSITE_OF.get(word, (word, 0))
        polarity ^= pole
        words.append(canonical)
    return tuple(words), polarity


def _checker_reply(text: str) -> str:
    """The fact checker: a new claim contradicts an earlier one when it says the same of the same
    thing with the opposite stance (a negation, or `advancing` where the other says `retreating`)."""
    earlier = re.findall(r"^(E\d+): (.*)$", text, flags=re.MULTILINE)
    now = re.findall(r"^(N\d+): (.*)$", text, flags=re.MULTILINE)
    pairs = []
    for n, new in now:
        words, polarity = _stance(new)
        for e, old in earlier:
            if _stance(old) == (words, 1 - polarity):
                pairs.append({"earlier": e, "now": n, "why": f"{e} and {n} say opposite things."})
                break
    return json.dumps({"contradictions": pairs})


def researcher_turn(
    messages: list[dict[str, Any]], tools: list[str], together: bool = False
) -> list[dict[str, Any]]:
    """The researcher's next tool calls (none: it is done). Steered by question markers:
    `[query=...]` what to search for, `[pages=N]` how many found pages to read (default 2),
    `[recall]` search the run's archive once after reading, `[corpus]` search the corpus beside the
    web, `[fetch=URL]` read that URL too, beside the found pages, `[mcp=NAME {json}]` call that MCP tool
    first when it is offered. A round whose calls all came back as malformed is made again, as a model would.
    `together` puts every search of the first round in one message."""
    task = _user_text(messages)
    turns = _useful_turns(messages)
    asked = sum(1 for m in messages if m.get("role") == "assistant")  # call ids stay unique, as a model's
    found = re.search(r"\[query=([^\]]+)\]", task)
    step = re.search(r"Your step: (.*)", task)
    query = found.group(1) if found else (step.group(1) if step else task[:80])
    if turns == 0:
        first = "web_search" if "web_search" in tools else "corpus_search"
        calls = [
            (name, json.loads(args or "{}"))
            for name, args in re.findall(r"\[mcp=(mcp__[\w-]+)(?: (\{[^\]]*\}))?\]", task)
            if name in tools
        ]
        calls.append((first, {"query": query}))
        if first == "web_search" and ("[corpus]" in task or (together and "corpus_search" in tools)):
            calls.append(("corpus_search", {"query": query}))
        return _calls(asked, calls)
    if turns == 1:
        seen = []
        for m in messages:
            if m.get("role") == "tool":
                for url in re.findall(r"<(https?://[^>\s]+)>", m.get("content") or ""):
                    if url not in seen:
                        seen.append(url)
        wanted = _marker(task, "pages", 2)
        extra = [m.group(1) for m in re.finditer(r"\[fetch=([^\]\s]+)\]", task)]
        return _calls(asked, [("fetch_url", {"url": url}) for url in [*seen[:wanted], *extra]])
    if turns == 2 and "[recall]" in task:
        return _calls(asked, [("recall", {"query": query})])
    return []


def _useful_turns(messages: list[dict[str, Any]]) -> int:
    """Rounds of tool calls so far, not counting a round whose every call was refused as malformed."""
    answers = {
        m.get("tool_call_id"): str(m.get("content") or "") for m in messages if m.get("role") == "tool"
    }
    turns = 0
    for m in messages:
        if m.get("role") != "assistant":
            continue
        ids = [c.get("id") for c in m.get("tool_calls") or []]
        if ids and all("ToolBadArguments" in answers.get(i, "") for i in ids):
            continue
        turns += 1
    return turns


def _calls(turn: int, calls: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{turn}_{i}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for i, (name, args) in enumerate(calls)
    ]


def _marker(text: str, name: str, default: int) -> int:
    found = re.search(rf"\[{name}=(\d+)\]", text)
    return int(found.group(1)) if found else default


def default_reply(messages: list[dict[str, Any]]) -> str:
    """The default script: a plausible, deterministic answer for each role. JSON for the roles whose
    answer is data (the server then gives it the form the request asks for), prose for the rest."""
    role, text = role_of(messages), _user_text(messages)
    question = text.split("\n", 1)[0].removeprefix("Research question: ")
    if role == "planner":
        count = _marker(question, "steps", 3)
        steps = [
            {
                "title": f"Investigate aspect {i} of the question",
                "kind": "research",
                "description": f"Find evidence on aspect {i}.",
            }
            for i in range(1, count + 1)
        ]
        if "[code]" in question:
            steps.append(
                {
                    "title": "Compute the squares of 1 to 10",
                    "kind": "code",
                    "description": "Sum them, and save them as a table and a chart.",
                }
            )
        answer = re.search(r"The person's answer: (.*)", text)
        if answer:  # A plan shaped by the answer to clarifying questions, as a planner's would be.
            steps.insert(0, {"title": f"Focus on {answer.group(1)[:80]}", "kind": "research"})
        feedback = re.search(r"Feedback from the person: (.*)", text)
        if feedback:
            steps.append({"title": f"Address feedback: {feedback.group(1)[:80]}", "kind": "research"})
        return json.dumps({"rationale": "Cover each aspect once.", "steps": steps})
    if role == "clarifier":
        questions = ["Which region do you mean?", "Over what period?"] if "[ambiguous]" in question else []
        return json.dumps({"questions": questions})
    if role == "reviewer":
        wanted = _marker(question, "replan", 0)
        done = len(set(re.findall(r"Follow-up (\d+)", text)))
        if done < wanted:
            return json.dumps(
                {
                    "sufficient": False,
                    "rationale": "One gap remains.",
                    "steps": [{"title": f"Follow-up {done + 1}", "kind": "research"}],
                }
            )
        return json.dumps({"sufficient": True, "rationale": "Covered.", "steps": []})
    if role == "coder":
        return _coder_reply(messages, text)
    if role == "finding":
        return _finding_reply(text)
    if role == "checker":
        return _checker_reply(text)
    if role == "researcher":
        step = re.search(r"Your step: (.*)", text)
        title = step.group(1) if step else "the step"
        return f"Finding for '{title}': the evidence points one way, stated plainly."
    if role == "reporter":
        findings = re.findall(r"^## (.*)\n(.*)$", text, flags=re.MULTILINE)
        body = "\n".join(f"- {title}: {first_line}" for title, first_line in findings)
        # Cite what the findings' claims cite, as a reporter should.
        cited = sorted(set(re.findall(r"^- .*?((?: \[\d+\])+)$", text, flags=re.MULTILINE)))
        if cited:
            body += "\n\nThe claims rest on these sources:" + "".join(cited) + "."
        return f"# Report: {question}\n\nWhat the steps established:\n\n{body}\n"
    return "OK"


# The scripted coder's program: real computation, one printed line, a CSV and a PNG in out/.
CODER_PROGRAM = """import os
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
os.makedirs("out", exist_ok=True)
values = np.arange(1, 11) ** 2
print("sum of squares 1..10 =", int(values.sum()))
np.savetxt("out/squares.csv", values, fmt="%d", header="square", comments="")
plt.plot(values)
plt.savefig("out/squares.png")
"""


def _coder_reply(messages: list[dict[str, Any]], text: str) -> str:
    last = str(messages[-1]["content"]) if messages else ""
    if "Program output:" in text:
        output = text.split("Program output:", 1)[1].strip()
        printed = output.split("stdout:\n", 1)[1].splitlines()[0] if "stdout:\n" in output else "nothing"
        # The run's duration is left out: the same run must give the same report.
        outcome = re.sub(r" after \d+ ms", "", output.splitlines()[0])
        return f"The program ran ({outcome}) and printed: {printed}."
    if last.startswith("The program failed"):
        return f"Fixed:\n```python\n{CODER_PROGRAM}```"
    return f"Here is the program:\n```python\n{CODER_PROGRAM}```"


# -- JSON Schema, as a provider's structured output treats it -------------------------------------------

# Keywords OpenAI's strict mode does not permit.
_NOT_PERMITTED = (
    "default",
    "minLength",
    "maxLength",
    "patternProperties",
    "unevaluatedProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "allOf",
    "oneOf",
    "not",
)


def strict_schema_problem(schema: Any, context: tuple[str, ...] = ()) -> str | None:
    """Why OpenAI would refuse `schema` in strict mode (its wording), or None."""
    if not context and (not isinstance(schema, dict) or schema.get("type") != "object"):
        return "In context=(), schema must be a JSON Schema of 'type: \"object\"', got something else."
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            problem = strict_schema_problem(item, (*context, str(i)))
            if problem:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    for keyword in _NOT_PERMITTED:
        if keyword in schema:
            return f"In context={context}, '{keyword}' is not permitted."
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        missing = [k for k in schema.get("properties", {}) if k not in schema.get("required", [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                problem = strict_schema_problem(sub, (*context, key, name))
                if problem:
                    return problem
        elif key in ("items", "anyOf"):
            problem = strict_schema_problem(value, (*context, key))
            if problem:
                return problem
    return None


_MISSING = object()


def conform(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """`value` fitted to `schema` as constrained decoding would make it: missing properties filled
    (null where allowed), unknown ones dropped, values outside an enum replaced by one inside it,
    arrays cut or padded to their bounds."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = {
            **(root.get("$defs") or root.get("definitions") or {})[name],
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    if "anyOf" in schema:
        options = schema["anyOf"]
        for option in options:
            if value is not _MISSING and _fits_type(value, option, root):
                return conform(value, option, root)
        if any(o.get("type") == "null" for o in options):
            return None
        return conform(value, options[0], root)
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "enum" in schema:
        return value if value in schema["enum"] else schema["enum"][0]
    if value is _MISSING and "null" in kinds:
        return None
    if "object" in kinds:
        source = value if isinstance(value, dict) else {}
        return {
            key: conform(source.get(key, _MISSING), sub, root)
            for key, sub in schema.get("properties", {}).items()
        }
    if "array" in kinds:
        items = [
            conform(v, schema.get("items", {}), root) for v in (value if isinstance(value, list) else [])
        ]
        items = items[: schema.get("maxItems", len(items))]
        while len(items) < schema.get("minItems", 0):
            items.append(conform(_MISSING, schema.get("items", {}), root))
        return items
    if "string" in kinds:
        return value if isinstance(value, str) else ("" if value is _MISSING or value is None else str(value))
    if "boolean" in kinds:
        return bool(value) if value is not _MISSING else False
    if "integer" in kinds:
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
    if "number" in kinds:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
    return None


def _fits_type(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = (root.get("$defs") or root.get("definitions") or {})[name]
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    checks = {
        "null": value is None,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }
    return any(checks.get(k, False) for k in kinds if k)


def _schema_in_prompt(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A JSON Schema the prompt spells out in a fenced ```json block, as told to a model in words."""
    for m in messages:
        if m.get("role") not in (*_SYSTEM_ROLES, "user"):
            continue
        for block in _FENCED_JSON.findall(str(m.get("content") or "")):
            try:
                schema = json.loads(block)
            except json.JSONDecodeError:
                continue
            if isinstance(schema, dict) and schema.get("type") == "object" and "properties" in schema:
                return schema
    return None


def _as_prose(script: str) -> str:
    """What a model writes when it is asked for data but not told the form: words, not JSON."""
    try:
        data = json.loads(script)
    except json.JSONDecodeError:
        return script
    lines = ["Here is what I would suggest."]

    def walk(value: Any, depth: int) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                if isinstance(sub, dict | list):
                    lines.append("  " * depth + f"{key.capitalize()}:")
                    walk(sub, depth + 1)
                else:
                    lines.append("  " * depth + f"{key.capitalize()}: {sub}")
        elif isinstance(value, list):
            for i, item in enumerate(value, 1):
                lines.append("  " * depth + f"{i}.")
                walk(item, depth + 1)
        else:
            lines.append("  " * depth + str(value))

    walk(data, 0)
    return "\n".join(lines)


def _json_of(script: str) -> Any:
    try:
        return json.loads(script)
    except json.JSONDecodeError:
        return {"answer": script}


# -- the server --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """What kind of server this is. The default is a provider that honours everything it is asked."""

    # The response_format types it accepts; anything else gets a 400 naming response_format.
    response_formats: tuple[str, ...] = ("json_schema", "json_object")
    strict_schemas: bool = True  # refuse a strict schema OpenAI would refuse
    tools: bool = True  # tool calling; without it, a request offering tools gets a 400
    parallel_tool_calls: bool = False  # every search of the first round in one message
    broken_tool_arguments: bool = False  # the first round's calls come with arguments that are not JSON
    models: frozenset[str] | None = None  # the models it serves (None: any); others get a 404


REFUSES_JSON_SCHEMA = Provider(response_formats=("json_object",))
REFUSES_RESPONSE_FORMAT = Provider(response_formats=())


@dataclass
class Fault:
    """One scripted failure for the next matching request (role None matches any)."""

    status: int = 500
    role: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    content: str | None = None  # status 200 with this content: a malformed answer, say.


# Decides, from the role and the request body, a fault for a request no scripted fault matched.
Chooser = Callable[[str, dict[str, Any]], Fault | None]


@dataclass
class Recorded:
    role: str
    messages: list[dict[str, Any]]
    status: int
    authorization: str = ""
    model: str = ""
    # When the request arrived (time.monotonic), so tests can measure the rate calls come in at.
    at: float = field(default_factory=time.monotonic)
    response_format: str = ""  # the type asked for, "" when none
    tools: list[str] = field(default_factory=list)  # the tools offered
    params: dict[str, Any] = field(default_factory=dict)  # sampling and reasoning parameters sent
    schema: dict[str, Any] | None = None  # the JSON schema a json_schema request carried
    form: str = ""  # what it answered: json_schema, json_object, json_in_prose, prose, tool_calls, error
    error: str = ""  # the message of an error answer
    tokens: int = 0  # the total tokens its answer's usage reported


_PARAMS = ("temperature", "max_tokens", "max_completion_tokens", "reasoning_effort", "top_p")


@dataclass
class ScriptedLLM:
    latency: float = 0.0
    api_key: str | None = None
    reply: Reply = default_reply
    port: int = 0
    chooser: Chooser | None = None
    provider: Provider = field(default_factory=Provider)
    requests: list[Recorded] = field(default_factory=list)
    conformed: int = 0  # scripted answers that had to be fitted to the request's schema
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _http: LoopbackServer = field(default_factory=LoopbackServer)

    # -- scripting -----------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        role: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
    ) -> None:
        with self._lock:
            self._faults += [Fault(status, role, retry_after, delay) for _ in range(times)]

    def answer_next(
        self, content: str, *, role: str | None = None, times: int = 1, delay: float = 0.0
    ) -> None:
        with self._lock:
            self._faults += [Fault(200, role, delay=delay, content=content) for _ in range(times)]

    def calls(self, role: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (role is None or r.role == role) and (status is None or r.status == status)
            )

    def forms(self, role: str | None = None) -> Counter[str]:
        """How many answers of each form it gave (to `role`'s requests)."""
        with self._lock:
            return Counter(r.form for r in self.requests if role is None or r.role == role)

    def _take_fault(self, role: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.role in (None, role):
                    return self._faults.pop(i)
        return None

    # -- serving -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{self._http.url}/v1"

    def start(self) -> ScriptedLLM:
        self._http.serve(_handler_for(self), self.port, name="scripted-llm")
        return self

    def stop(self) -> None:
        self._http.shutdown()

    def respond(self, body: dict[str, Any], authorization: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        arrived = time.monotonic()
        messages = body.get("messages") or []
        role = role_of(messages)
        fault = None
        headers: dict[str, str] = {}
        record = Recorded(
            role,
            messages,
            0,
            authorization,
            str(body.get("model", "")),
            at=arrived,
            response_format=str((body.get("response_format") or {}).get("type") or ""),
            tools=[t.get("function", {}).get("name", "") for t in body.get("tools") or []],
            params={k: body[k] for k in _PARAMS if k in body},
            schema=((body.get("response_format") or {}).get("json_schema") or {}).get("schema"),
        )
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            status, payload = 401, _error(401, "Incorrect API key provided.", "invalid_api_key")
        else:
            refusal = self._refusal(body)
            if refusal is not None:
                status, payload = refusal
            else:
                fault = self._take_fault(role)
                if fault is None and self.chooser is not None:
                    fault = self.chooser(role, body)
                status, headers, payload = self._answer(body, messages, fault, record)
        record.status = status
        record.tokens = int((payload.get("usage") or {}).get("total_tokens") or 0)
        if status != 200:
            record.form, record.error = "error", str(payload.get("error", {}).get("message", ""))
        with self._lock:
            self.requests.append(record)
        time.sleep(self.latency + (fault.delay if fault else 0.0))
        return status, headers, payload

    def _refusal(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """What a real server refuses before it generates anything: an unknown model, parameters the
        model does not take, a response format or tools it cannot do, a schema it will not compile."""
        model = str(body.get("model", ""))
        known = self.provider.models
        if known is not None and model not in known:
            return 404, _error(
                404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"
            )
        if _REASONING_MODEL.match(model):
            if "temperature" in body and body["temperature"] not in (None, 1, 1.0):
                return 400, _error(
                    400,
                    f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                    "model. Only the default (1) value is supported.",
                    "unsupported_value",
                    "temperature",
                )
            if "max_tokens" in body:
                return 400, _error(
                    400,
                    "Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead.",
                    "unsupported_parameter",
                    "max_tokens",
                )
        elif "reasoning_effort" in body:
            return 400, _error(
                400,
                "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                "unsupported_parameter",
                "reasoning_effort",
            )
        if body.get("tools") and not self.provider.tools:
            return 400, _error(400, f"registry/{model} does not support tools", None, "tools")
        fmt = body.get("response_format")
        if fmt:
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            if kind not in ("text", *self.provider.response_formats):
                return 400, _error(
                    400,
                    f"Invalid parameter: 'response_format' of type '{kind}' is not supported with this model.",
                    "invalid_request_error",
                    "response_format",
                )
            if kind == "json_schema":
                spec = fmt.get("json_schema") or {}
                schema = spec.get("schema")
                if not isinstance(schema, dict) or not spec.get("name"):
                    return 400, _error(
                        400,
                        "Missing required parameter: 'response_format.json_schema.name'.",
                        None,
                        "response_format",
                    )
                if spec.get("strict") and self.provider.strict_schemas:
                    problem = strict_schema_problem(schema)
                    if problem:
                        return 400, _error(
                            400,
                            f"Invalid schema for response_format '{spec['name']}': {problem}",
                            "invalid_json_schema",
                            "response_format",
                        )
            if kind == "json_object":
                text = " ".join(str(m.get("content") or "") for m in body.get("messages") or [])
                if "json" not in text.lower():
                    return 400, _error(
                        400,
                        "'messages' must contain the word 'json' in some form, to use 'response_format' of "
                        "type 'json_object'.",
                        None,
                        "messages",
                    )
        return None

    def _answer(
        self, body: dict[str, Any], messages: list[dict[str, Any]], fault: Fault | None, record: Recorded
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if fault is not None and fault.status != 200:
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return fault.status, headers, _error(fault.status, f"scripted failure {fault.status}")
        tool_calls: list[dict[str, Any]] = []
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        fmt = body.get("response_format") or {}
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if fault is not None and fault.content is not None:
            content, record.form = fault.content, "scripted"
        elif tools and role_of(messages) == "researcher":
            tool_calls = researcher_turn(messages, tools, together=self.provider.parallel_tool_calls)
            if tool_calls and self.provider.broken_tool_arguments and _useful_turns(messages) == 0:
                if not any(m.get("role") == "tool" for m in messages):  # Only the very first round.
                    for call in tool_calls:
                        call["function"]["arguments"] = call["function"]["arguments"][:-2]
            content = "" if tool_calls else "I have what I need."
            record.form = "tool_calls" if tool_calls else "prose"
        elif kind == "json_schema":
            schema = fmt["json_schema"]["schema"]
            scripted = _json_of(self.reply(messages))
            fitted = conform(copy.deepcopy(scripted), schema)
            if fitted != scripted:
                with self._lock:
                    self.conformed += 1
            content, record.form = json.dumps(fitted), "json_schema"
        elif kind == "json_object":
            value = _json_of(self.reply(messages))
            content, record.form = (
                json.dumps(value if isinstance(value, dict) else {"answer": value}),
                "json_object",
            )
        else:
            schema = _schema_in_prompt(messages)
            if schema is not None:
                fitted = conform(_json_of(self.reply(messages)), schema)
                content = (
                    f"Sure! Here is the JSON you asked for:\n```json\n{json.dumps(fitted, indent=2)}\n```"
                )
                record.form = "json_in_prose"
            else:
                content, record.form = _as_prose(self.reply(messages)), "prose"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
        completion_tokens = (len(content) + len(json.dumps(tool_calls) if tool_calls else "")) // 4 + 1
        return (
            200,
            {},
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "tool_calls" if tool_calls else "stop",
                        "message": message,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


def _error(status: int, message: str, code: Any = None, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code if code is not None else status,
        }
    }


def _handler_for(llm: ScriptedLLM) -> type[QuietHandler]:
    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: TCP_NODELAY sends the body at once instead of
            # holding it for the client's delayed ACK (Nagle's algorithm), a wait that is the server's
            # and must not count as Cairn's.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            path = self.path.rstrip("/")
            # Call counts by role, for a process that drives this server from outside (ScriptedLLMProcess).
            if path.endswith("/_calls"):
                with llm._lock:
                    counts = Counter(r.role for r in llm.requests)
                self._send(200, {}, dict(counts))
            elif path.endswith("/models"):
                names = sorted(llm.provider.models) if llm.provider.models is not None else ["scripted"]
                data = [{"id": n, "object": "model", "created": 0, "owned_by": "scripted"} for n in names]
                self._send(200, {}, {"object": "list", "data": data})
            else:
                self._send(404, {}, _error(404, f"no route {self.path}"))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if len(raw) < length:
                self.close_connection = True  # The client died while sending: there is no request.
                return
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send(400, {}, _error(400, "request body is not JSON"))
                return
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, {}, _error(404, f"no route {self.path}"))
                return
            self._send(*llm.respond(body, self.headers.get("Authorization", "")))

        def _send(self, status: int, headers: dict[str, str], payload: dict[str, Any]) -> None:
            self.send_body(
                status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()
            )

    return Handler


class ScriptedLLMProcess:
    """The scripted LLM in a process of its own, as a provider is: its request handling then takes no
    CPU (or GIL) from a worker in the caller's process, which would count as Cairn's overhead in a
    benchmark. Only default replies and a fixed latency; `calls` asks the server."""

    def __init__(self, latency: float = 0.0) -> None:
        from testkit.dev_server import free_port

        self.port = free_port()
        self.latency = latency
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, seconds: float = 30.0) -> ScriptedLLMProcess:
        command = [sys.executable, "-m", "testkit.scripted_llm", "--port", str(self.port)]
        command += ["--latency-ms", f"{self.latency * 1000:g}"]
        root = Path(__file__).resolve().parent.parent  # where `-m testkit...` resolves, from any cwd
        self.process = subprocess.Popen(
            command, cwd=root, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the scripted LLM exited with {self.process.returncode}")
            try:
                self.calls()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the scripted LLM did not answer on port {self.port} within {seconds:g} s")

    def calls(self, role: str | None = None) -> int:
        with urllib.request.urlopen(f"{self.base_url}/_calls", timeout=5) as response:
            counts: dict[str, int] = json.loads(response.read())
        return sum(counts.values()) if role is None else counts.get(role, 0)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            processes.stop(self.process, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    llm = ScriptedLLM(latency=args.latency_ms / 1000, port=args.port).start()
    print(f"scripted LLM at {llm.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

"""LLM faults for the chaos suite: which requests fail, how, and a log of what each request got.

Why this exists: the chaos suite (testkit/chaos.py) must fail a share of LLM requests the way providers
do (429 with Retry-After, 500, a timeout, malformed JSON) without ever changing what a run eventually
writes. `FaultInjector` is a `ScriptedLLM.chooser`: the decision for a request depends on the seed,
the request and how often it arrived before, never on timing; the eventual answer depends on the
request alone, as the scripted server's always does.

Must never: give a malformed answer where Cairn does not validate and re-ask (it would rightly change
the report), or fail a request so often that a run runs out of attempts.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from testkit.scripted_llm import Fault

FAULT_KINDS = ("429", "500", "timeout", "malformed")
# Roles whose answer is JSON that Cairn validates and re-asks on: a malformed answer costs a re-ask and
# leaves the report as it was. Anywhere else (a researcher's tool-calling turn, the reporter, the coder)
# a malformed answer is a different answer, and would rightly change the report.
JSON_ROLES = frozenset({"planner", "reviewer", "finding"})
REASK_MARKERS = ("That reply was not valid", "Your previous answer was not valid")
# What differs between sessions in a request that is otherwise the same: loopback ports (the research
# site's URLs) and how long a sandbox run took (the coder's summary request quotes it).
_VARIES = re.compile(r"(?<=127\.0\.0\.1):\d+| after \d+ ms")
MALFORMED = (
    "Here is the JSON you asked for, more or less.",
    '{"rationale": "cut short", "steps": [{"title": "unterminated',
    '{"rationale": "nothing else", "steps": []}',
)


def request_key(body: dict[str, Any]) -> str:
    """What makes two requests the same call: the messages and the tools offered. A retry of a call
    sends the same request; a re-ask after a malformed answer is a new call. What varies between
    sessions is left out, so a seed picks the same faults from one session to the next."""
    tools = sorted(t.get("function", {}).get("name", "") for t in body.get("tools") or [])
    text = json.dumps({"messages": body.get("messages") or [], "tools": tools}, sort_keys=True)
    return hashlib.sha256(_VARIES.sub("", text).encode()).hexdigest()[:20]


def research_question(body: dict[str, Any]) -> str:
    """The question a request works on: every role's first user message names it on a line of its own."""
    first: dict[str, Any] = next((m for m in body.get("messages") or [] if m.get("role") == "user"), {})
    found = re.search(r"^Research question: (.*)$", str(first.get("content") or ""), flags=re.MULTILINE)
    return found.group(1) if found else ""


def is_reask(body: dict[str, Any]) -> bool:
    texts = [str(m.get("content") or "") for m in body.get("messages") or []]
    return any(marker in text for text in texts for marker in REASK_MARKERS)


def choose_fault(seed: int, rate: float, key: str, arrival: int, role: str, reask: bool) -> str | None:
    """The fault kind for the `arrival`-th arrival of request `key`, or None. Pure: the same
    arguments give the same answer, so a seed's faults can be worked out ahead of a run."""
    rng = random.Random(f"{seed}:{key}:{arrival}")
    if rng.random() >= rate:
        return None
    kinds = [k for k in FAULT_KINDS if k != "malformed" or (role in JSON_ROLES and not reask)]
    return rng.choice(kinds)


@dataclass(frozen=True)
class Served:
    """One request as the scripted server saw it: when (time.time()), which call, what it got."""

    at: float
    role: str
    key: str
    outcome: str  # "ok" or one of FAULT_KINDS
    arrival: int = 0  # how many times the same request had arrived before
    reask: bool = False
    question: str = ""  # the research question the request works on: which run sent it

    @property
    def answered(self) -> bool:
        """The server answered 200: the worker got a reply its activity completes with."""
        return self.outcome in ("ok", "malformed")


class FaultInjector:
    """A `ScriptedLLM.chooser`: fails `rate` of requests, deterministically for a seed.

    The n-th time the same request arrives, the decision comes from a generator seeded with (seed,
    request, n), so a retry is decided afresh, and the same run with the same seed meets the same
    faults. Only the first `max_per_call` arrivals of a request may fail, and a re-ask is never given
    a malformed answer, so no run can fail for want of attempts."""

    def __init__(
        self,
        rate: float = 0.2,
        seed: int = 0,
        *,
        timeout_delay: float = 4.0,
        retry_after: tuple[float, float] = (0.2, 0.5),
        max_per_call: int = 3,
    ) -> None:
        self.rate = rate
        self.seed = seed
        self.timeout_delay = timeout_delay  # longer than the worker's LLM request timeout
        self.retry_after = retry_after
        self.max_per_call = max_per_call
        self.served: list[Served] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, role: str, body: dict[str, Any]) -> Fault | None:
        key = request_key(body)
        with self._lock:
            arrival = self._seen[key]
            self._seen[key] += 1
        reask = is_reask(body)
        kind = None
        if arrival < self.max_per_call:
            kind = choose_fault(self.seed, self.rate, key, arrival, role, reask)
        question = research_question(body)
        with self._lock:
            self.served.append(Served(time.time(), role, key, kind or "ok", arrival, reask, question))
        if kind is None:
            return None
        rng = random.Random(f"{self.seed}:{key}:{arrival}:how")
        if kind == "429":
            return Fault(429, retry_after=round(rng.uniform(*self.retry_after), 2))
        if kind == "500":
            return Fault(500)
        if kind == "timeout":
            return Fault(504, delay=self.timeout_delay)
        return Fault(200, content=rng.choice(MALFORMED))

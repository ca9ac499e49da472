"""A scripted OpenAI-compatible chat server for tests and benchmarks: real HTTP, deterministic answers.

The real client code (langchain-openai over httpx) talks to it exactly as it would to a provider, so
retries, status codes, `Retry-After` and token accounting are exercised for real. Answers depend only
on the request, so the same run gives the same report; faults are injected per request from a queue.
It listens on loopback only. Run standalone with `python -m testkit.scripted_llm --port 8099`.

Question markers steer the default script: `[steps=N]` sets the plan's size, `[code]` adds a code
step to it, `[replan=K]` makes the reviewer ask for one more step K times. A `chooser` (testkit/chaos.py)
may decide a fault for any request the queue of scripted faults leaves alone.
"""

from __future__ import annotations

import argparse
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
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from testkit.loopback import LoopbackServer

Reply = Callable[[list[dict[str, str]]], str]


def role_of(messages: list[dict[str, str]]) -> str:
    """Which Cairn role sent this request, from the fixed first line of its system prompt. The
    researcher writing up its finding counts as "finding": one such request per research step."""
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    for role in ("planner", "plan reviewer", "researcher", "coder", "reporter"):
        if system.startswith(f"You are Cairn's {role}."):
            if role == "researcher" and "Write the finding of your research step" in system:
                return "finding"
            return role.replace("plan ", "")
    return "other"


def _user_text(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in messages if m.get("role") == "user"), "")


def _finding_reply(text: str) -> str:
    """The researcher's finding: one claim per source it may cite (at most four), citing it."""
    step = re.search(r"Your step: (.*)", text)
    listed = re.findall(r"^\[(S\d+)\] (.*)$", text.split("Sources you may cite:", 1)[-1], flags=re.MULTILINE)
    claims = [{"text": f"{title} bears on the step.", "sources": [sid]} for sid, title in listed[:4]]
    summary = f"Finding for '{step.group(1) if step else 'the step'}': {len(listed)} sources consulted."
    return json.dumps({"summary": summary, "claims": claims})


def researcher_turn(messages: list[dict[str, Any]], tools: list[str]) -> list[dict[str, Any]]:
    """The researcher's next tool calls (none: it is done). Steered by question markers:
    `[query=...]` what to search for, `[pages=N]` how many found pages to read (default 2),
    `[recall]` search the run's archive once after reading."""
    task = _user_text(messages)
    turns = sum(1 for m in messages if m.get("role") == "assistant")
    found = re.search(r"\[query=([^\]]+)\]", task)
    step = re.search(r"Your step: (.*)", task)
    query = found.group(1) if found else (step.group(1) if step else task[:80])
    if turns == 0:
        first = "web_search" if "web_search" in tools else "corpus_search"
        calls = [(first, {"query": query})]
        if first == "web_search" and "[corpus]" in task:
            calls.append(("corpus_search", {"query": query}))
        return _calls(turns, calls)
    if turns == 1:
        seen = []
        for m in messages:
            if m.get("role") == "tool":
                for url in re.findall(r"<(https?://[^>\s]+)>", m.get("content") or ""):
                    if url not in seen:
                        seen.append(url)
        wanted = _marker(task, "pages", 2)
        return _calls(turns, [("fetch_url", {"url": url}) for url in seen[:wanted]])
    if turns == 2 and "[recall]" in task:
        return _calls(turns, [("recall", {"query": query})])
    return []


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


def default_reply(messages: list[dict[str, str]]) -> str:
    """The default script: a plausible, deterministic answer for each role."""
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
        feedback = re.search(r"Feedback from the person: (.*)", text)
        if feedback:
            steps.append({"title": f"Address feedback: {feedback.group(1)[:80]}", "kind": "research"})
        return json.dumps({"rationale": "Cover each aspect once.", "steps": steps})
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


def _coder_reply(messages: list[dict[str, str]], text: str) -> str:
    last = messages[-1]["content"] if messages else ""
    if "Program output:" in text:
        output = text.split("Program output:", 1)[1].strip()
        printed = output.split("stdout:\n", 1)[1].splitlines()[0] if "stdout:\n" in output else "nothing"
        # The run's duration is left out: the same run must give the same report.
        outcome = re.sub(r" after \d+ ms", "", output.splitlines()[0])
        return f"The program ran ({outcome}) and printed: {printed}."
    if last.startswith("The program failed"):
        return f"Fixed:\n```python\n{CODER_PROGRAM}```"
    return f"Here is the program:\n```python\n{CODER_PROGRAM}```"


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
    messages: list[dict[str, str]]
    status: int
    authorization: str = ""
    model: str = ""
    # When the request arrived (time.monotonic), so tests can measure the rate calls come in at.
    at: float = field(default_factory=time.monotonic)


@dataclass
class ScriptedLLM:
    latency: float = 0.0
    api_key: str | None = None
    reply: Reply = default_reply
    port: int = 0
    chooser: Chooser | None = None
    requests: list[Recorded] = field(default_factory=list)
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
        headers: dict[str, str]
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            status, headers, payload = 401, {}, _error(401, "Incorrect API key provided.")
        else:
            fault = self._take_fault(role)
            if fault is None and self.chooser is not None:
                fault = self.chooser(role, body)
            status, headers, payload = self._answer(body, messages, fault)
        with self._lock:
            self.requests.append(
                Recorded(role, messages, status, authorization, str(body.get("model", "")), at=arrived)
            )
        time.sleep(self.latency + (fault.delay if fault else 0.0))
        return status, headers, payload

    def _answer(
        self, body: dict[str, Any], messages: list[dict[str, str]], fault: Fault | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        if fault is not None and fault.status != 200:
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return fault.status, headers, _error(fault.status, f"scripted failure {fault.status}")
        tool_calls: list[dict[str, Any]] = []
        tools = [t["function"]["name"] for t in body.get("tools") or []]
        if fault is not None and fault.content is not None:
            content = fault.content
        elif tools and role_of(messages) == "researcher":
            tool_calls = researcher_turn(messages, tools)
            content = "" if tool_calls else "I have what I need."
        else:
            content = self.reply(messages)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            message["tool_calls"] = tool_calls
        prompt_tokens = sum(len(m.get("content") or "") for m in messages) // 4 + 1
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


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "scripted", "code": status}}


def _handler_for(llm: ScriptedLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm and the
            # client's delayed ACK hold the body back ~40 ms, which is the server's fault, not Cairn's.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # Tests read the recorded requests, not stderr.

        def handle(self) -> None:
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # The client went away (a killed worker, a timeout): nothing to answer.

        def do_GET(self) -> None:
            # Call counts by role, for a process that drives this server from outside (ScriptedLLMProcess).
            if self.path.rstrip("/").endswith("/_calls"):
                with llm._lock:
                    counts = Counter(r.role for r in llm.requests)
                self._send(200, {}, dict(counts))
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
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

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
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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

"""The `llm.chat` activity: one chat completion against an OpenAI-compatible server.

The request goes out through the OpenAI SDK's client, built once per worker, as a plain
`POST /chat/completions` with the body written here (messages as the API takes them, tools, the
response format), on aiohttp where it is installed. That is what every call needs and no more: the
SDK's typed `create` walks the whole request to transform it and LangChain's chat model adds its own
layers, together 1.5 ms of a worker's CPU per call (docs/benchmarks.md), a tenth of everything a
call costs the worker.

Temporal owns retries, so the client is built with `max_retries=0` and every provider error is
translated here, at the edge, into an `ApplicationError` with a stable type: rate limits and server
errors are retryable (honouring `Retry-After`), a bad request or bad credentials are not. The API key
lives on this object, built once at worker start; it never appears in a request, a result, history or
a span. Each call is a GenAI `chat <model>` span with tokens and cost, and counts in Cairn's metrics.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import with_heartbeats
from activities.redact import redact
from activities.telemetry import STRUCTURED_OUTPUT, Telemetry
from common import errors
from common.config import LLMConfig
from common.models import ChatMessage, ChatRequest, ChatResponse, StructuredOutput
from common.names import LLM_CHAT

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion


def sdk() -> ModuleType:
    """The OpenAI SDK, imported on first use: it is the heaviest import of a worker (0.4 s), and a
    worker that has just started must poll first (worker.py imports it in the background then)."""
    import openai

    return openai


# Stable error types: workflows, tests and operators match on these strings.

_NON_RETRYABLE = {
    400: (errors.LLM_BAD_REQUEST, "the LLM server rejected the request as malformed (400)"),
    401: (errors.LLM_AUTH, "the LLM server rejected the credentials (401): check OPENAI_API_KEY"),
    403: (errors.LLM_FORBIDDEN, "the LLM server refused access (403): check the key's permissions"),
    404: (
        errors.LLM_NOT_FOUND,
        "the LLM server does not know this model or path (404): check the model name and OPENAI_BASE_URL",
    ),
    422: (errors.LLM_BAD_REQUEST, "the LLM server could not process the request (422)"),
}
_MAX_RETRY_AFTER = timedelta(minutes=10)


def retry_after(headers: Any) -> timedelta | None:
    """Parse `Retry-After` (seconds or an HTTP date, or OpenAI's `retry-after-ms`)."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return min(timedelta(milliseconds=float(raw_ms)), _MAX_RETRY_AFTER)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return min(timedelta(seconds=max(float(raw), 0.0)), _MAX_RETRY_AFTER)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw)
        if parsed is None:
            return None
        delay = parsed.timestamp() - time.time()
        return min(timedelta(seconds=max(delay, 0.0)), _MAX_RETRY_AFTER)


def _detail(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:500]
    return str(err.message)[:500]


def translate_error(
    err: Exception, model: str, *, tools: bool = False, secrets: tuple[str | None, ...] = ()
) -> ApplicationError:
    """Map a provider exception onto an ApplicationError that Temporal's retry policy acts on, its
    message cleared of credentials (the provider may echo the key; the message lands in history)."""
    failure = _translate(err, model, tools)
    cleaned = redact(failure.message, secrets)
    if cleaned == failure.message:
        return failure
    return ApplicationError(
        cleaned,
        type=failure.type,
        non_retryable=failure.non_retryable,
        next_retry_delay=failure.next_retry_delay,
    )


def _translate(err: Exception, model: str, tools: bool) -> ApplicationError:
    if isinstance(err, sdk().LengthFinishReasonError):
        return ApplicationError(
            f"model {model} stopped at its output token limit before finishing the answer: "
            "raise CAIRN_MAX_OUTPUT_TOKENS (or the server's limit)",
            type=errors.LLM_TRUNCATED,
            non_retryable=True,
        )
    if isinstance(err, sdk().ContentFilterFinishReasonError):
        return ApplicationError(
            f"model {model}'s answer was withheld by the server's content filter",
            type=errors.LLM_CONTENT_FILTERED,
            non_retryable=True,
        )
    if tools and isinstance(err, sdk().APIStatusError) and err.status_code in (400, 422, 501):
        detail = _detail(err)
        if any(word in detail.lower() for word in _TOOLS_REFUSED):
            return ApplicationError(
                f"model {model} does not support tool calling, which the researcher needs: choose a "
                f"model that does (CAIRN_RESEARCHER_MODEL); the server said: {detail}",
                type=errors.LLM_TOOLS_UNSUPPORTED,
                non_retryable=True,
            )
    if isinstance(err, sdk().APITimeoutError):
        return ApplicationError(f"LLM request to model {model} timed out", type=errors.LLM_TIMEOUT)
    if isinstance(err, sdk().APIConnectionError):
        return ApplicationError(f"cannot reach the LLM server: {err}", type=errors.LLM_CONNECTION)
    if isinstance(err, sdk().APIStatusError):
        status = err.status_code
        detail = _detail(err)
        if status in _NON_RETRYABLE:
            kind, text = _NON_RETRYABLE[status]
            return ApplicationError(f"{text}; model {model}: {detail}", type=kind, non_retryable=True)
        delay = retry_after(err.response.headers)
        if status == 429:
            return ApplicationError(
                f"the LLM server is rate limiting (429); model {model}: {detail}",
                type=errors.LLM_RATE_LIMITED,
                next_retry_delay=delay,
            )
        return ApplicationError(
            f"the LLM server failed ({status}); model {model}: {detail}",
            type=errors.LLM_SERVER,
            next_retry_delay=delay,
        )
    return ApplicationError(f"unexpected LLM client error: {err}", type=errors.LLM_SERVER)


Message = dict[str, Any]  # a chat message as the API takes it


def to_openai(message: ChatMessage | Mapping[str, Any]) -> Message:
    """A chat message as the API takes it: a ChatMessage of `llm.chat`, or one of the researcher
    graph's plain-dict messages (which may carry tool calls, or answer one)."""
    m: Mapping[str, Any] = message.model_dump() if isinstance(message, ChatMessage) else message
    role, content = m["role"], m.get("content") or ""
    if role == "tool":
        return {"role": "tool", "tool_call_id": m["tool_call_id"], "content": content}
    if role == "assistant" and m.get("tool_calls"):
        calls = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c.get("args") or {})},
            }
            for c in m["tool_calls"]
        ]
        return {"role": "assistant", "content": content, "tool_calls": calls}
    return {"role": role, "content": content}


def tool_calls_of(message: Any) -> list[dict[str, Any]]:
    """The reply's tool calls as `{"id", "name", "args"}`; a call whose arguments are not a JSON object
    is kept, with `"error"` saying so, so the graph can answer it with a refusal the model learns from."""
    calls: list[dict[str, Any]] = []
    for i, call in enumerate(getattr(message, "tool_calls", None) or []):
        function = getattr(call, "function", None)
        name = str(getattr(function, "name", "") or "")
        raw = getattr(function, "arguments", "") or ""
        entry: dict[str, Any] = {"id": getattr(call, "id", None) or f"call-{i}", "name": name, "args": {}}
        try:
            args = json.loads(raw) if raw.strip() else {}
            if not isinstance(args, dict):
                raise ValueError(f"the arguments are a JSON {type(args).__name__}, not an object")
            entry["args"] = args
        except ValueError as err:
            entry["error"] = f"arguments are not valid JSON: {err}"[:300]
        calls.append(entry)
    return calls


@dataclass(frozen=True)
class Completion:
    text: str
    tool_calls: list[dict[str, Any]]
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    output_mode: str = ""  # how JSON was asked for: json_schema, json_object, prompt; "" for prose

    def record(self) -> dict[str, Any]:
        """The call's usage as the researcher graph keeps it in its state (Usage.of_calls reads it)."""
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }


# Ways to ask for JSON, strongest first. A server that refuses one is asked the next way at once, in the
# same activity attempt: the refused request did not complete, so nothing is repeated and no Temporal
# attempt is spent.
STRUCTURED_LADDER = ("json_schema", "json_object", "prompt")
_NAMES_RESPONSE_FORMAT = (
    "response_format",
    "response format",
    "json_schema",
    "json_object",
    "structured output",
)
_TOOLS_REFUSED = (
    "does not support tools",
    "tools are not supported",
    "tool calling is not supported",
    "tool use is not supported",
    "does not support tool",
    "tool_choice",
)


def refuses_response_format(err: Exception) -> bool:
    """A 400 or 422 whose message names the response format: the server cannot do what was asked."""
    if not isinstance(err, sdk().APIStatusError) or err.status_code not in (400, 422):
        return False
    text = f"{_detail(err)} {err.message}".lower()
    return any(word in text for word in _NAMES_RESPONSE_FORMAT)


def format_instruction(output: StructuredOutput) -> str:
    """The JSON's shape in words, for servers that take it only from the prompt (and json_object mode,
    which OpenAI accepts only when a message mentions JSON)."""
    return (
        "Answer with one JSON object, and nothing else, that conforms to this JSON Schema:\n```json\n"
        + json.dumps(output.json_schema, separators=(",", ":"))
        + "\n```"
    )


def with_instruction(messages: list[Message], instruction: str) -> list[Message]:
    """`messages` with `instruction` appended to the system message (one system message is what every
    chat template accepts), or opening the conversation when there is none."""
    if messages and messages[0].get("role") in ("system", "developer"):
        first = {**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{instruction}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def _http_client() -> Any:
    """aiohttp under the SDK where it is installed (a dependency on every platform with a build): it
    spends less of the worker's CPU per request than the SDK's default transport."""
    try:
        return sdk().DefaultAioHttpClient()
    except RuntimeError:
        return None


def _chat_completion() -> type[ChatCompletion]:
    from openai.types.chat import ChatCompletion

    return ChatCompletion


def _first_choice(reply: ChatCompletion, structured: bool) -> Any:
    """The reply's answer (None when it has none). An answer asked for as JSON that the server stopped
    at its token limit, or withheld, cannot be parsed: those raise the typed errors the SDK's
    structured-output helper raises."""
    if not reply.choices:
        return None
    choice = reply.choices[0]
    if structured and choice.finish_reason == "length":
        raise sdk().LengthFinishReasonError(completion=reply)
    if structured and choice.finish_reason == "content_filter":
        raise sdk().ContentFilterFinishReasonError()
    return choice


class LLMActivities:
    """Built once per worker; holds the provider clients so keys stay out of history."""

    def __init__(self, config: LLMConfig, telemetry: Telemetry | None = None) -> None:
        self._config = config
        self._telemetry = telemetry or Telemetry()
        self._http: openai.AsyncOpenAI | None = None
        # What each server and model accepts, learnt from its refusals, for the worker's lifetime.
        self._structured: dict[tuple[str | None, str], str] = {}

    @property
    def config(self) -> LLMConfig:
        return self._config

    def _client(self) -> openai.AsyncOpenAI:
        """One client per worker, made on the first call (inside the worker's event loop, where its
        connection pool lives)."""
        if self._http is None:
            self._http = sdk().AsyncOpenAI(
                api_key=self._config.api_key or "not-needed",
                base_url=self._config.base_url,
                max_retries=0,
                timeout=self._config.request_timeout_seconds,
                http_client=_http_client(),
            )
        return self._http

    async def close(self) -> None:
        """Release the client's connections (the worker calls this once it has stopped)."""
        client, self._http = self._http, None
        if client is not None:
            await client.close()

    def _options(self, role: str, model: str) -> dict[str, Any]:
        """Sampling and reasoning parameters for `role`'s model. Reasoning models refuse any temperature
        but their default; one is never sent to them."""
        options: dict[str, Any] = {}
        effort = self._config.effort_for(role)
        if self._config.temperature is not None and not self._config.is_reasoning(role, model):
            options["temperature"] = self._config.temperature
        if self._config.max_output_tokens is not None:
            options["max_completion_tokens"] = self._config.max_output_tokens
        if effort is not None:
            options["reasoning_effort"] = effort
        return options

    def structured_mode(self, model: str) -> str:
        """The way to ask this server and model for JSON: configured, or the strongest not refused."""
        if self._config.structured_output != "auto":
            return self._config.structured_output
        return self._structured.get((self._config.base_url, model), STRUCTURED_LADDER[0])

    def _learn(self, model: str, refused: str, err: Exception) -> str:
        """Move this server and model one step down the ladder, and say so once."""
        mode = STRUCTURED_LADDER[STRUCTURED_LADDER.index(refused) + 1]
        key = (self._config.base_url, model)
        if self._structured.get(key) != mode:
            self._structured[key] = mode
            said = _detail(err) if isinstance(err, sdk().APIStatusError) else str(err)
            activity.logger.warning(
                "the LLM server refuses response_format %s for model %s (%s); asking it with %s from now on",
                refused,
                model,
                redact(said, (self._config.api_key,)),
                mode,
            )
        return mode

    async def complete(
        self,
        role: str,
        messages: list[Message],
        purpose: str,
        tools: list[dict[str, Any]] | None = None,
        output: StructuredOutput | None = None,
    ) -> Completion:
        """One chat completion, as the model of `role`, optionally offering tools (OpenAI function
        specs) or asking for JSON of `output`'s schema. Provider errors leave as ApplicationErrors; the
        call heartbeats while it waits."""
        if not self._config.configured:
            raise ApplicationError(
                "no LLM is configured on this worker: set OPENAI_API_KEY or OPENAI_BASE_URL",
                type=errors.LLM_NOT_CONFIGURED,
                non_retryable=True,
            )
        model = self._config.model_for(role)
        telemetry = self._telemetry
        mode = self.structured_mode(model) if output is not None else ""
        if self._config.is_reasoning(role, model):
            # Reasoning models take the system prompt as the developer's message, the role OpenAI's
            # o-series and gpt-5 are documented with.
            messages = [{**m, "role": "developer"} if m.get("role") == "system" else m for m in messages]
        with telemetry.llm_call(model, role, purpose, self._config.base_url) as span:
            while True:
                body: dict[str, Any] = {"model": model, "messages": messages, **self._options(role, model)}
                if tools:
                    body["tools"] = tools
                if output is not None:
                    if mode == "json_schema":
                        spec = {"name": output.name, "schema": output.json_schema, "strict": output.strict}
                        body["response_format"] = {"type": "json_schema", "json_schema": spec}
                    else:
                        body["messages"] = with_instruction(messages, format_instruction(output))
                        if mode == "json_object":
                            body["response_format"] = {"type": "json_object"}
                try:
                    reply = await with_heartbeats(
                        self._client().post("/chat/completions", body=body, cast_to=_chat_completion())
                    )
                    choice = _first_choice(reply, output is not None)
                    break
                except sdk().OpenAIError as err:
                    if (
                        output is not None
                        and self._config.structured_output == "auto"
                        and mode != STRUCTURED_LADDER[-1]
                        and refuses_response_format(err)
                    ):
                        mode = self._learn(model, mode, err)
                        continue
                    failure = translate_error(err, model, tools=bool(tools), secrets=(self._config.api_key,))
                    telemetry.llm_failed(span, model=model, role=role, error_type=failure.type or "")
                    raise failure from err
            if choice is None:
                telemetry.llm_failed(span, model=model, role=role, error_type=errors.LLM_SERVER)
                raise ApplicationError(
                    f"the LLM server answered model {model} with no choices", type=errors.LLM_SERVER
                )
            usage = reply.usage
            response_model = str(reply.model or model)
            input_tokens = int(usage.prompt_tokens) if usage else 0
            output_tokens = int(usage.completion_tokens) if usage else 0
            cost = self._config.cost((response_model, model), input_tokens, output_tokens)
            telemetry.llm_done(
                span,
                model=model,
                role=role,
                response_model=response_model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost,
            )
            if mode:
                span.set_attribute(STRUCTURED_OUTPUT, mode)
        activity.logger.info(
            "%s: %s answered with %d input and %d output tokens",
            purpose or "chat",
            response_model,
            input_tokens,
            output_tokens,
        )
        return Completion(
            text=choice.message.content or "",
            tool_calls=tool_calls_of(choice.message),
            model=response_model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
            output_mode=mode,
        )

    @activity.defn(name=LLM_CHAT)
    async def chat(self, request: ChatRequest) -> ChatResponse:
        done = await self.complete(
            request.role,
            [to_openai(m) for m in request.messages],
            request.purpose,
            output=request.output,
        )
        return ChatResponse(
            content=done.text,
            model=done.model,
            input_tokens=done.input_tokens,
            output_tokens=done.output_tokens,
            cost_usd=done.cost_usd,
            output_mode=done.output_mode,
        )

"""The `llm.chat` activity: one chat completion against an OpenAI-compatible server.

Temporal owns retries, so the client is built with `max_retries=0` and every provider error is
translated here, at the edge, into an `ApplicationError` with a stable type: rate limits and server
errors are retryable (honouring `Retry-After`), a bad request or bad credentials are not. The API key
lives on this object, built once at worker start; it never appears in a request, a result, history or
a span. Each call is a GenAI `chat <model>` span with tokens and cost, and counts in Cairn's metrics.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import openai
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import with_heartbeats
from activities.telemetry import Telemetry
from common.config import LLMConfig
from common.models import ChatMessage, ChatRequest, ChatResponse
from common.names import LLM_CHAT

# Stable error types: workflows, tests and operators match on these strings.
ERR_RATE_LIMITED = "LLMRateLimited"
ERR_SERVER = "LLMServerError"
ERR_TIMEOUT = "LLMTimeout"
ERR_CONNECTION = "LLMConnectionError"
ERR_BAD_REQUEST = "LLMBadRequest"
ERR_AUTH = "LLMAuthenticationFailed"
ERR_FORBIDDEN = "LLMPermissionDenied"
ERR_NOT_FOUND = "LLMModelNotFound"
ERR_NOT_CONFIGURED = "LLMNotConfigured"

_NON_RETRYABLE = {
    400: (ERR_BAD_REQUEST, "the LLM server rejected the request as malformed (400)"),
    401: (ERR_AUTH, "the LLM server rejected the credentials (401): check OPENAI_API_KEY"),
    403: (ERR_FORBIDDEN, "the LLM server refused access (403): check the key's permissions"),
    404: (
        ERR_NOT_FOUND,
        "the LLM server does not know this model or path (404): check the model name and OPENAI_BASE_URL",
    ),
    422: (ERR_BAD_REQUEST, "the LLM server could not process the request (422)"),
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


def translate_error(err: Exception, model: str) -> ApplicationError:
    """Map a provider exception onto an ApplicationError that Temporal's retry policy acts on."""
    if isinstance(err, openai.APITimeoutError):
        return ApplicationError(f"LLM request to model {model} timed out", type=ERR_TIMEOUT)
    if isinstance(err, openai.APIConnectionError):
        return ApplicationError(f"cannot reach the LLM server: {err}", type=ERR_CONNECTION)
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        detail = _detail(err)
        if status in _NON_RETRYABLE:
            kind, text = _NON_RETRYABLE[status]
            return ApplicationError(f"{text}; model {model}: {detail}", type=kind, non_retryable=True)
        delay = retry_after(err.response.headers)
        if status == 429:
            return ApplicationError(
                f"the LLM server is rate limiting (429); model {model}: {detail}",
                type=ERR_RATE_LIMITED,
                next_retry_delay=delay,
            )
        return ApplicationError(
            f"the LLM server failed ({status}); model {model}: {detail}",
            type=ERR_SERVER,
            next_retry_delay=delay,
        )
    return ApplicationError(f"unexpected LLM client error: {err}", type=ERR_SERVER)


def _to_langchain(message: ChatMessage) -> BaseMessage:
    if message.role == "system":
        return SystemMessage(content=message.content)
    if message.role == "assistant":
        return AIMessage(content=message.content)
    return HumanMessage(content=message.content)


@dataclass(frozen=True)
class Completion:
    message: AIMessage
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float

    @property
    def text(self) -> str:
        content = self.message.content
        return content if isinstance(content, str) else str(content)


class LLMActivities:
    """Built once per worker; holds the provider clients so keys stay out of history."""

    def __init__(self, config: LLMConfig, telemetry: Telemetry | None = None) -> None:
        self._config = config
        self._telemetry = telemetry or Telemetry()
        self._clients: dict[str, ChatOpenAI] = {}

    def _client(self, model: str) -> ChatOpenAI:
        client = self._clients.get(model)
        if client is None:
            client = ChatOpenAI(
                model=model,
                api_key=self._config.api_key or "not-needed",  # type: ignore[arg-type]
                base_url=self._config.base_url,
                max_retries=0,
                timeout=self._config.request_timeout_seconds,
            )
            self._clients[model] = client
        return client

    async def complete(
        self,
        role: str,
        messages: list[BaseMessage],
        purpose: str,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        """One chat completion, as the model of `role`, optionally offering tools (OpenAI function
        specs). Provider errors leave as ApplicationErrors; the call heartbeats while it waits."""
        if not self._config.configured:
            raise ApplicationError(
                "no LLM is configured on this worker: set OPENAI_API_KEY or OPENAI_BASE_URL",
                type=ERR_NOT_CONFIGURED,
                non_retryable=True,
            )
        model = self._config.model_for(role)
        telemetry = self._telemetry
        client: Any = self._client(model)
        if tools:
            client = client.bind_tools(tools)
        with telemetry.llm_call(model, role, purpose, self._config.base_url) as span:
            try:
                reply = await with_heartbeats(client.ainvoke(messages))
            except openai.OpenAIError as err:
                failure = translate_error(err, model)
                telemetry.llm_failed(span, model=model, role=role, error_type=failure.type or "")
                raise failure from err
            usage = getattr(reply, "usage_metadata", None) or {}
            response_model = str(reply.response_metadata.get("model_name") or model)
            input_tokens = int(usage.get("input_tokens", 0))
            output_tokens = int(usage.get("output_tokens", 0))
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
        activity.logger.info(
            "%s: %s answered with %d input and %d output tokens",
            purpose or "chat",
            response_model,
            input_tokens,
            output_tokens,
        )
        return Completion(reply, response_model, input_tokens, output_tokens, cost)

    @activity.defn(name=LLM_CHAT)
    async def chat(self, request: ChatRequest) -> ChatResponse:
        done = await self.complete(
            request.role, [_to_langchain(m) for m in request.messages], request.purpose
        )
        return ChatResponse(
            content=done.text,
            model=done.model,
            input_tokens=done.input_tokens,
            output_tokens=done.output_tokens,
            cost_usd=done.cost_usd,
        )

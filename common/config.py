"""Configuration read from the environment by the worker and the client, never by workflows.

Workflows must stay deterministic, so nothing in `workflows/` calls into this module; the worker reads it
once at start-up and hands values to activities. Keys read here stay on the worker: they never enter a
workflow input, an activity payload or history.
"""

from __future__ import annotations

import getpass
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.envconfig import ClientConfig

from common.env import ConfigError, number, whole
from common.names import DEFAULT_TASK_QUEUE

ROLES = ("planner", "researcher", "coder", "reporter")
DEFAULT_MODEL = "gpt-4o-mini"
EMBEDDED_HOST = "127.0.0.1"
EMBEDDED_PORT = 7233
EMBEDDED_UI_PORT = 8233


def cairn_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CAIRN_HOME") or Path.home() / ".cairn").expanduser()


def private_files() -> None:
    """Everything this process and its children create is readable by its own user only (directories
    0700, files 0600): CAIRN_HOME holds the Temporal database, reports, payloads and documents. Called
    first thing by every Cairn process (the CLI, the worker, the API)."""
    os.umask(0o077)


def private_directory(path: Path) -> Path:
    """Create `path` for this user alone; an existing one Cairn made before is tightened to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def embedded_ports(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Ports of the embedded dev server and its Web UI (CAIRN_DEV_PORT, CAIRN_DEV_UI_PORT)."""
    env = os.environ if env is None else env
    return whole(env, "CAIRN_DEV_PORT", EMBEDDED_PORT), whole(env, "CAIRN_DEV_UI_PORT", EMBEDDED_UI_PORT)


def metrics_port(env: Mapping[str, str] | None = None) -> int | None:
    """CAIRN_METRICS_PORT: where the worker serves Prometheus metrics on 127.0.0.1; unset means none."""
    env = os.environ if env is None else env
    port = whole(env, "CAIRN_METRICS_PORT", 0)
    return port or None


def owner(env: Mapping[str, str] | None = None) -> str:
    """Who starts runs (the CairnOwner search attribute): CAIRN_OWNER, else the OS user."""
    env = os.environ if env is None else env
    if env.get("CAIRN_OWNER"):
        return env["CAIRN_OWNER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # A container user with no passwd entry and no LOGNAME.
        return "unknown"


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


def model_prices(env: Mapping[str, str]) -> dict[str, ModelPrice]:
    """CAIRN_MODEL_PRICES: `{"model": {"input": usd_per_million, "output": usd_per_million}}`.

    Prices are configuration, not code, because they change and self-hosted models cost what their
    owner says. A model with no price costs 0 in spans, metrics and a run's spend."""
    raw = env.get("CAIRN_MODEL_PRICES")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return {
            str(model): ModelPrice(input=float(price["input"]), output=float(price["output"]))
            for model, price in data.items()
        }
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f'CAIRN_MODEL_PRICES must be JSON like {{"gpt-4o-mini": {{"input": 0.15, "output": 0.6}}}} '
            f"(USD per million tokens): {err}"
        ) from err


STRUCTURED_OUTPUT_MODES = ("auto", "json_schema", "json_object", "prompt")
# OpenAI's reasoning models (o1, o3, o4-mini, the gpt-5 family) refuse a temperature other than the
# default; a provider prefix ("openai/o3") is allowed for gateways such as LiteLLM.
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)", re.IGNORECASE)


@dataclass(frozen=True)
class LLMConfig:
    """How the worker reaches an OpenAI-compatible server. Lives on the worker only."""

    api_key: str | None
    base_url: str | None
    models: dict[str, str] = field(default_factory=dict)
    request_timeout_seconds: float = 120.0
    prices: dict[str, ModelPrice] = field(default_factory=dict)
    # CAIRN_STRUCTURED_OUTPUT: how calls that expect JSON ask for it. `auto` starts with a JSON schema
    # and falls back as far as the server requires (json_object, then the schema in the prompt).
    structured_output: str = "auto"
    # Sampling and reasoning, by configuration: CAIRN_TEMPERATURE (never sent to reasoning models),
    # CAIRN_MAX_OUTPUT_TOKENS (sent as max_completion_tokens), CAIRN_REASONING_EFFORT and
    # CAIRN_<ROLE>_REASONING_EFFORT (keyed "default" and by role).
    temperature: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: dict[str, str] = field(default_factory=dict)

    def effort_for(self, role: str) -> str | None:
        return self.reasoning_effort.get(role) or self.reasoning_effort.get("default")

    def is_reasoning(self, role: str, model: str) -> bool:
        """A reasoning model: one given a reasoning effort, or one of OpenAI's by name."""
        return self.effort_for(role) is not None or bool(_REASONING_MODEL.match(model))

    def cost(self, models: tuple[str, ...], input_tokens: int, output_tokens: int) -> float:
        """The call's cost from the first of `models` (response model, then request model) with a
        price; 0 when none has one."""
        for model in models:
            price = self.prices.get(model)
            if price is not None:
                return price.cost(input_tokens, output_tokens)
        return 0.0

    @property
    def configured(self) -> bool:
        return bool(self.api_key or self.base_url)

    def model_for(self, role: str) -> str:
        return self.models.get(role) or self.models.get("default") or DEFAULT_MODEL

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> LLMConfig:
        env = os.environ if env is None else env
        models = {"default": env.get("CAIRN_MODEL") or DEFAULT_MODEL}
        for role in ROLES:
            value = env.get(f"CAIRN_{role.upper()}_MODEL")
            if value:
                models[role] = value
        efforts = {"default": env.get("CAIRN_REASONING_EFFORT") or ""}
        for role in ROLES:
            efforts[role] = env.get(f"CAIRN_{role.upper()}_REASONING_EFFORT") or ""
        mode = (env.get("CAIRN_STRUCTURED_OUTPUT") or "auto").strip().lower()
        if mode not in STRUCTURED_OUTPUT_MODES:
            raise ConfigError(
                f"CAIRN_STRUCTURED_OUTPUT={mode!r} must be one of {', '.join(STRUCTURED_OUTPUT_MODES)}"
            )
        temperature = number(env, "CAIRN_TEMPERATURE", 0.0) if env.get("CAIRN_TEMPERATURE") else None
        if temperature is not None and not 0 <= temperature <= 2:
            raise ConfigError(f"CAIRN_TEMPERATURE={temperature:g} must be between 0 and 2")
        max_output = whole(env, "CAIRN_MAX_OUTPUT_TOKENS", 0)
        if max_output < 0:
            raise ConfigError(f"CAIRN_MAX_OUTPUT_TOKENS={max_output} must be a positive number of tokens")
        return LLMConfig(
            api_key=env.get("OPENAI_API_KEY") or None,
            base_url=env.get("OPENAI_BASE_URL") or None,
            models=models,
            request_timeout_seconds=number(env, "CAIRN_LLM_TIMEOUT", 120.0),
            prices=model_prices(env),
            structured_output=mode,
            temperature=temperature,
            max_output_tokens=max_output or None,
            reasoning_effort={k: v.strip().lower() for k, v in efforts.items() if v.strip()},
        )

    def require(self) -> None:
        if not self.configured:
            raise ConfigError(
                "no LLM is configured: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL "
                "(any OpenAI-compatible server such as vLLM, Ollama or llama.cpp)"
            )


@dataclass(frozen=True)
class LLMLimits:
    """How hard Cairn's workers, all together, may drive the LLM provider.

    `rate_per_second` (CAIRN_LLM_RATE_PER_SECOND) caps LLM calls per second across every worker: it
    is the LLM task queue's dispatch rate, which the Temporal server enforces, so ten workers get N
    calls a second between them, not 10 N. None means no cap. `max_concurrent` (CAIRN_LLM_MAX_CONCURRENT)
    is how many calls one worker has in flight at once. Every worker should be given the same rate:
    the server keeps the value of whichever worker polled last."""

    rate_per_second: float | None = None
    # LLM calls wait on the network (2-60 s each at a real provider), so a worker holds many at once:
    # each costs a little memory (its messages, a socket), not a core. The provider is protected by
    # the shared rate (rate_per_second), not by this; docs/configuration.md sizes it.
    max_concurrent: int = 200

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> LLMLimits:
        env = os.environ if env is None else env
        rate: float | None = None
        if env.get("CAIRN_LLM_RATE_PER_SECOND"):
            rate = number(env, "CAIRN_LLM_RATE_PER_SECOND", 0.0)
            # inf and nan parse as floats but mean nothing to the server.
            if not 0 < rate < float("inf"):
                raise ConfigError(
                    f"CAIRN_LLM_RATE_PER_SECOND={env['CAIRN_LLM_RATE_PER_SECOND']!r} must be a positive "
                    "number of calls per second (unset it for no limit)"
                )
        concurrent = whole(env, "CAIRN_LLM_MAX_CONCURRENT", LLMLimits.max_concurrent)
        if concurrent < 1:
            raise ConfigError(f"CAIRN_LLM_MAX_CONCURRENT={concurrent} must be at least 1")
        return LLMLimits(rate_per_second=rate, max_concurrent=concurrent)


WORKER_ROLES = ("all", "workflows", "llm")


def worker_role(env: Mapping[str, str] | None = None) -> str:
    """CAIRN_WORKER_ROLE: `all` (default) runs workflows and LLM calls, `workflows` or `llm` one side,
    so a deployment can scale LLM callers apart from orchestration."""
    env = os.environ if env is None else env
    role = env.get("CAIRN_WORKER_ROLE") or "all"
    if role not in WORKER_ROLES:
        raise ConfigError(f"CAIRN_WORKER_ROLE={role!r} must be one of {', '.join(WORKER_ROLES)}")
    return role


@dataclass(frozen=True)
class TemporalConfig:
    """Where the Temporal server is. `explicit` is false when nothing was configured, in which case
    Cairn may start its embedded dev server at the default address."""

    connect: dict[str, object]
    explicit: bool
    task_queue: str

    @property
    def address(self) -> str:
        return str(self.connect["target_host"])

    @property
    def namespace(self) -> str:
        return str(self.connect.get("namespace") or "default")

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> TemporalConfig:
        env = os.environ if env is None else env
        # temporalio.envconfig reads TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_PROFILE and the
        # profile file; a configured address means "use that server, never start our own".
        connect = dict(ClientConfig.load_client_connect_config(override_env_vars=dict(env)))
        explicit = "target_host" in connect
        connect.setdefault("target_host", f"{EMBEDDED_HOST}:{embedded_ports(env)[0]}")
        connect.setdefault("namespace", "default")
        return TemporalConfig(
            connect=connect,
            explicit=explicit,
            task_queue=env.get("CAIRN_TASK_QUEUE") or DEFAULT_TASK_QUEUE,
        )

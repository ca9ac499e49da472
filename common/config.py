"""Configuration read from the environment by the worker and the client, never by workflows.

Workflows must stay deterministic, so nothing in `workflows/` calls into this module; the worker reads it
once at start-up and hands values to activities. Keys read here stay on the worker: they never enter a
workflow input, an activity payload or history.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.envconfig import ClientConfig

from common.names import DEFAULT_TASK_QUEUE

ROLES = ("planner", "researcher", "coder", "reporter")
DEFAULT_MODEL = "gpt-4o-mini"
EMBEDDED_HOST = "127.0.0.1"
EMBEDDED_PORT = 7233
EMBEDDED_UI_PORT = 8233


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable to set."""


def cairn_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CAIRN_HOME") or Path.home() / ".cairn").expanduser()


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as err:
        raise ConfigError(f"{name}={raw!r} is not a number") from err


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from err


def embedded_ports(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Ports of the embedded dev server and its Web UI (CAIRN_DEV_PORT, CAIRN_DEV_UI_PORT)."""
    env = os.environ if env is None else env
    return _int(env, "CAIRN_DEV_PORT", EMBEDDED_PORT), _int(env, "CAIRN_DEV_UI_PORT", EMBEDDED_UI_PORT)


@dataclass(frozen=True)
class LLMConfig:
    """How the worker reaches an OpenAI-compatible server. Lives on the worker only."""

    api_key: str | None
    base_url: str | None
    models: dict[str, str] = field(default_factory=dict)
    request_timeout_seconds: float = 120.0

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
        return LLMConfig(
            api_key=env.get("OPENAI_API_KEY") or None,
            base_url=env.get("OPENAI_BASE_URL") or None,
            models=models,
            request_timeout_seconds=_float(env, "CAIRN_LLM_TIMEOUT", 120.0),
        )

    def require(self) -> None:
        if not self.configured:
            raise ConfigError(
                "no LLM is configured: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL "
                "(any OpenAI-compatible server such as vLLM, Ollama or llama.cpp)"
            )


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

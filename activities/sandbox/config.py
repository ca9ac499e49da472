"""Limits and settings of the code sandbox, with defaults, readable from CAIRN_SANDBOX_* variables.

Why a separate module: the worker, the CLI, the bench and the tests all build the same engine and must
agree on the limits; reading them in one place keeps `cairn sandbox exec` identical to the activity.

Must never: pass any of the worker's environment into a sandbox (this module only reads our own
CAIRN_SANDBOX_* settings, on the worker), or hold a docker client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from common.config import ConfigError, cairn_home
from common.version import SANDBOX_IMAGE

MIB = 1024 * 1024


@dataclass(frozen=True)
class SandboxConfig:
    image: str = SANDBOX_IMAGE
    memory_mib: int = 256  # also the memory+swap limit: no swap
    pids: int = 64  # processes and threads together
    cpus: float = 1.0
    timeout_seconds: float = 30.0  # default wall-clock limit of one program
    max_timeout_seconds: float = 300.0  # a request may ask for more than the default, up to this
    output_cap_bytes: int = 64 * 1024  # per stream; head and tail are kept around a marker
    tmp_mib: int = 64  # /tmp tmpfs
    workspace_mib: int = 64  # /workspace tmpfs (input files, program, out/)
    max_artifacts: int = 20
    max_artifact_bytes: int = 8 * MIB
    max_artifacts_total_bytes: int = 16 * MIB
    pool_size: int = 2  # warm containers kept started and idle; 0 disables the pool
    pool_max_idle_seconds: float = 600.0  # recycle idle pool containers older than this
    # Containers labelled by a worker on another machine are reaped once older than this.
    orphan_after_seconds: float = 3600.0
    reap_interval_seconds: float = 60.0
    heartbeat_seconds: float = 1.0
    # Slack beyond the program's timeout before the host kills the container itself (the bootstrap
    # normally enforces the timeout and reports partial output; this is the backstop).
    host_grace_seconds: float = 10.0
    artifacts_dir: Path | None = None  # default: $CAIRN_HOME/artifacts

    @property
    def artifacts_root(self) -> Path:
        return self.artifacts_dir or cairn_home() / "artifacts"

    def clamp_timeout(self, requested: float | None) -> float:
        if requested is None or requested <= 0:
            return self.timeout_seconds
        return min(float(requested), self.max_timeout_seconds)

    def max_report_bytes(self) -> int:
        """Upper bound of the bootstrap's report: base64 of both streams and all artifacts, plus slack."""
        raw = 2 * self.output_cap_bytes + self.max_artifacts_total_bytes
        return raw * 4 // 3 + 256 * 1024

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> SandboxConfig:
        """CAIRN_SANDBOX_<FIELD> overrides each field, e.g. CAIRN_SANDBOX_MEMORY_MIB=512."""
        env = os.environ if env is None else env
        changes: dict[str, object] = {}
        defaults = SandboxConfig()
        for f in fields(SandboxConfig):
            name = "CAIRN_SANDBOX_" + f.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            default = getattr(defaults, f.name)
            try:
                if f.name == "artifacts_dir":
                    changes[f.name] = Path(raw).expanduser()
                elif isinstance(default, bool):
                    changes[f.name] = raw.lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    changes[f.name] = int(raw)
                elif isinstance(default, float):
                    changes[f.name] = float(raw)
                else:
                    changes[f.name] = raw
            except ValueError as err:
                raise ConfigError(f"{name}={raw!r} is not a valid {type(default).__name__}") from err
        return replace(defaults, **changes)  # type: ignore[arg-type]

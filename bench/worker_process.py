"""Cairn worker processes for the benchmarks: `python worker.py` as an operator runs it, configured
only through its environment, which starts from this process's with every Temporal, OpenAI and Cairn
variable removed so nothing of the caller's own setup leaks into a measurement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker_env(
    temporal_address: str, task_queue: str, home: Path | str, llm_url: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "OPENAI_", "CAIRN_"))}
    env.update(
        TEMPORAL_ADDRESS=temporal_address,
        CAIRN_TASK_QUEUE=task_queue,
        CAIRN_HOME=str(home),
        OPENAI_BASE_URL=llm_url,
        OPENAI_API_KEY="sk-bench",
        **extra,
    )
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """One worker process, its output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )

"""Credentials out of error messages, before a message becomes an ApplicationError and so enters history.

Providers and search services echo what they were sent ("Incorrect API key provided: sk-abc...xyz"), and
a failure's message is stored in the run's history, shown in the Web UI and in reports. Everything an
activity raises from a remote answer passes through `redact`: the worker's own keys are removed exactly,
and anything shaped like a credential (an `sk-`/`tvly-`/`AKIA` key, a bearer token, a `key=value` secret,
a JWT) is replaced.

Must never: return the text of a key it was given, in any casing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[redacted]"
_SHAPES = (
    re.compile(r"\b(?:sk|pk|rk|tvly|gsk|xai|ghp|gho|github_pat|hf|glpat)[-_][A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),  # a JWT
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(
        r"(?i)\b((?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd|apikey)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]{4,}"
    ),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secrets and without anything that looks like a credential."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = re.sub(re.escape(secret), MASK, text, flags=re.IGNORECASE)
    for shape in _SHAPES:
        text = shape.sub(lambda m: (m.group(1) + MASK) if m.lastindex else MASK, text)
    return text

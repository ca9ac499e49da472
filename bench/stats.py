"""The one definition of a percentile that every benchmark reports.

Why this exists: a p50 or p95 in bench/results/ and in the README must mean the same thing whichever
benchmark wrote it, so they can be set side by side. Nearest rank: a reported percentile is always a
time that some run really took, never an interpolation between two runs.
"""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The sample at the rank nearest to `q` (0 to 1) x (count - 1), counting from 0, with Python's
    rounding (half to even: of 10 samples, p50 is the 5th smallest and p95 the largest)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]

"""How every benchmark hands over its figures: one JSON file in bench/results/ and the same table on
stdout, so the README's figures can always be traced to a file."""

from __future__ import annotations

import json
from pathlib import Path


def publish(report: dict[str, object], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        print(f"{key:>28}: {value}")

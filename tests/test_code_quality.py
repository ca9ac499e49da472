"""The linters run with the tests, so CI fails on a lint or type error like on any other failure."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import run

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


async def test_ruff_lint_is_clean() -> None:
    code, out, err = await run(str(BIN / "ruff"), "check", str(ROOT), check=False)
    assert code == 0, out + err


async def test_ruff_format_is_applied() -> None:
    code, out, err = await run(str(BIN / "ruff"), "format", "--check", str(ROOT), check=False)
    assert code == 0, out + err


async def test_mypy_is_clean() -> None:
    code, out, err = await run(str(BIN / "mypy"), str(ROOT), check=False, seconds=300)
    assert code == 0, out + err

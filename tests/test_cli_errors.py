"""The `cairn` CLI when a request cannot be carried out: a finished run, an unknown id, a run no worker
answers for, an unreadable plan file, a run id that cannot be one. Each is one `cairn: ...` line on
stderr and exit code 1, never a traceback; a real subprocess against the real dev server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from client.api import CairnClient, CairnError
from tests.conftest import CAIRN
from tests.helpers import run


async def refused(env: dict[str, str], *args: str) -> str:
    """Run `cairn *args`, assert it refused in one line, and return that line."""
    code, out, err = await run(CAIRN, *args, env=env, check=False, seconds=90)
    assert code == 1, (args, out, err)
    assert "Traceback" not in err and err.startswith("cairn: ") and err.count("\n") == 1, (args, err)
    return err


def steering(wid: str, plan_file: Path) -> list[list[str]]:
    """Every command that signals, updates or queries a run, with an explicit plan version where it
    takes one (so no status query is asked first)."""
    return [
        ["abort", wid],
        ["skip", wid, "s1"],
        ["add-step", wid, "One more step"],
        ["raise-budget", wid, "--tokens", "100000"],
        ["edit", wid, str(plan_file), "--version", "1"],
        ["approve", wid, "--version", "1"],
        ["revise", wid, "change it", "--version", "1"],
    ]


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"steps": [{"title": "Only this step"}]}))
    return path


async def test_steering_a_finished_run_says_it_has_ended(
    env: dict[str, str], cairn: CairnClient, plan_file: Path
) -> None:
    wid = await cairn.start("Finished before it is steered [steps=1]", auto_approve=True)
    await cairn.result(wid)
    lines = await asyncio.gather(*(refused(env, *args) for args in steering(wid, plan_file)))
    assert all(f"run {wid} has ended (completed)" in line for line in lines), lines
    for args in (["approve", wid], ["edit", wid, str(plan_file)]):  # These ask its status first.
        assert f"run {wid} is done, not awaiting approval" in await refused(env, *args)


async def test_an_unknown_id_is_named(env: dict[str, str], plan_file: Path) -> None:
    commands = [
        *steering("no-such-run", plan_file),
        ["status", "no-such-run"],
        ["report", "no-such-run"],
        ["watch", "no-such-run"],
        ["approve", "no-such-run"],
    ]
    lines = await asyncio.gather(*(refused(env, *args) for args in commands))
    assert all(line == "cairn: no run with id no-such-run\n" for line in lines), lines


async def test_a_run_no_worker_answers_for_is_named_within_seconds(
    env: dict[str, str], cairn: CairnClient, plan_file: Path
) -> None:
    unpolled = CairnClient(cairn.temporal, f"{cairn.task_queue}-nobody")
    wid = await unpolled.start("Nobody will run this")
    ended = await unpolled.start("Nobody ran this before it ended")
    await cairn.temporal.get_workflow_handle(ended).terminate("test")
    try:  # `refused` gives each command 90 s: a call that waited for a worker without bound fails it.
        status, approve, budget, closed = await asyncio.gather(
            refused(env, "status", wid),
            refused(env, "approve", wid),
            refused(env, "raise-budget", wid, "--tokens", "100000"),
            refused(env, "status", ended),
        )
        for line in (status, approve):
            assert f"run {wid} did not answer its status query within 5 s" in line, line
            assert "no worker polls its task queue" in line
        assert f"run {wid} did not answer the budget raise within 10 s" in budget
        assert f"run {ended} did not answer its status query:" in closed
    finally:
        await cairn.temporal.get_workflow_handle(wid).terminate("test cleanup")


async def test_an_unreadable_plan_file_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    files = {
        "latin1.json": ('[{"title": "Caf\xe9"}]'.encode("latin-1"), "is not UTF-8 text"),
        "deep.json": (b"[" * 200_000 + b"]" * 200_000, "is nested too deeply"),
        "big.json": (b" " * (2 * 1024 * 1024) + b"[]", "is larger than 1,048,576 bytes"),
        "digits.json": (b'[{"title": ' + b"9" * 5000 + b"}]", "cannot be read as a plan"),
    }
    commands = []
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
        commands.append(["edit", "any-run", str(tmp_path / name)])
    commands += [["edit", "any-run", str(tmp_path)], ["edit", "any-run", "/dev/zero"]]
    lines = await asyncio.gather(*(refused(env, *args) for args in commands))
    for line, (_, expected) in zip(lines, files.values(), strict=False):
        assert expected in line, line
    assert "Is a directory" in lines[-2] and "is larger than" in lines[-1]


async def test_arguments_no_request_can_carry_are_one_line(env: dict[str, str]) -> None:
    not_utf8 = b"caf\xe9".decode("utf-8", "surrogateescape")  # How Python holds such bytes of argv.
    commands = {
        ("revise", "any-run", not_utf8, "--version", "1"): "an argument is not UTF-8 text: 'caf\\udce9'",
        ("status", not_utf8): "an argument is not UTF-8 text",
        ("status", ""): "no run id given",
        ("skip", "any-run", "s" * 1000): "invalid skip: step_id",
        ("abort", "any-run", "--reason", "r" * 100_000): "invalid abort: reason",
    }
    lines = await asyncio.gather(*(refused(env, *args) for args in commands))
    for line, expected in zip(lines, commands.values(), strict=True):
        assert expected in line, line


BAD_IDS = ["a/b", "x" * 201, "has space", "tab\there", "bell\x07", "zero\u200bwidth", ""]


async def test_a_research_id_is_bounded_at_the_door(env: dict[str, str], cairn: CairnClient) -> None:
    before = len(await cairn.list(limit=1000))
    lines = await asyncio.gather(*(refused(env, "research", "Any question", "--id", i) for i in BAD_IDS))
    assert all(line.startswith("cairn: invalid run id: ") for line in lines), lines
    assert "'/' is kept for its steps' workflows" in lines[0] and "201 characters" in lines[1]
    for bad in BAD_IDS:
        with pytest.raises(CairnError, match="invalid run id"):
            await cairn.start("Any question", workflow_id=bad)
    assert len(await cairn.list(limit=1000)) == before  # None of these started a run.

    wid = await cairn.start("Taken [steps=1]", workflow_id="x" * 200)
    line = await refused(env, "research", "Again", "--id", wid)
    assert line == f"cairn: a run with id {wid} already exists\n"
    await cairn.temporal.get_workflow_handle(wid).terminate("test cleanup")

"""Hostile programs against the real sandbox: each must be contained, reported as a clear ExecResult,
leave the host unaffected and leave no container behind. Plus the numpy/pandas/matplotlib happy path.

Network checks look from inside only (interfaces, name resolution); nothing here sends traffic to an
outside address.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import docker
import pytest

from activities.sandbox.artifacts import NAME_DEPTH, NAME_PART_BYTES
from activities.sandbox.engine import SANDBOX_ENV
from activities.sandbox.runner import SandboxRunner
from common.sandbox_models import MAX_SKIPPED_LISTED, SUMMARY_CHARS, ExecRequest, ExecResult
from tests.sandbox_support import REPO, assert_only_pool_left
from workflows.coder import DESCRIBE_CHARS, describe

MIB = 1024 * 1024


def _file_size(path: str) -> int:
    return Path(path).stat().st_size


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


async def run(runner: SandboxRunner, tmp_path: Path, code: str, **kw: object) -> ExecResult:
    return await runner.run(ExecRequest(code=code, **kw), artifacts_dir=tmp_path / "out")  # type: ignore[arg-type]


async def test_fork_bomb_is_contained(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    res = await run(sandbox_runner, tmp_path, code, timeout_seconds=3)
    assert res.pids_limit_hit, res
    assert res.timed_out
    assert "process limit reached (64" in res.error
    assert "killed after 3s wall-clock timeout" in res.error
    # The host can still start processes.
    proc = await asyncio.create_subprocess_exec("true")
    assert await proc.wait() == 0
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_memory_bomb_is_oom_killed(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
chunks = []
print("allocating", flush=True)
while True:
    chunks.append(bytearray(16 * 1024 * 1024))
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.oom_killed, res
    assert not res.timed_out
    assert res.exit_code == 137 and res.signal == "SIGKILL"
    assert "out of memory (limit 256 MiB)" in res.error
    assert res.stdout == "allocating\n"  # output before the kill is kept
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_infinite_loop_times_out_with_partial_output(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    res = await run(
        sandbox_runner, tmp_path, "print('started', flush=True)\nwhile True:\n    pass\n", timeout_seconds=2
    )
    assert res.timed_out
    assert res.exit_code == 137
    assert res.stdout == "started\n"
    assert res.error.startswith("killed after 2s wall-clock timeout")
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_program_ignoring_sigterm_is_killed(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.kill(os.getpid(), signal.SIGTERM)
print("survived SIGTERM", flush=True)
if os.fork() == 0:
    os.setsid()  # a daemonised grandchild must die too
    while True:
        time.sleep(1)
time.sleep(600)
"""
    res = await run(sandbox_runner, tmp_path, code, timeout_seconds=2)
    assert res.stdout == "survived SIGTERM\n"
    assert res.timed_out and res.signal == "SIGKILL"
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_filling_tmp_hits_the_tmpfs_cap(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import errno
written = 0
try:
    with open("/tmp/fill", "wb") as f:
        while True:
            f.write(b"x" * (1024 * 1024))
            f.flush()
            written += 1
except OSError as e:
    print("stopped", errno.errorcode[e.errno], written)
"""
    disk_before = shutil.disk_usage("/").free
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 0, res
    word, code_name, mib = res.stdout.split()
    assert (word, code_name) == ("stopped", "ENOSPC")
    assert int(mib) <= sandbox_runner.config.tmp_mib
    # tmpfs lives in the container's memory cgroup, not on the host's disk.
    assert shutil.disk_usage("/").free > disk_before - 32 * MIB
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_stdout_flood_is_truncated(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import sys
sys.stdout.write("BEGIN\\n")
for _ in range(64):
    sys.stdout.write("x" * (1024 * 1024))
sys.stdout.write("\\nEND\\n")
sys.stderr.write("tail of stderr\\n")
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 0
    assert res.stdout_truncated and not res.stderr_truncated
    assert res.stdout_bytes == 64 * MIB + len("BEGIN\n") + len("\nEND\n")
    cap = sandbox_runner.config.output_cap_bytes
    assert len(res.stdout) < cap + 200
    assert res.stdout.startswith("BEGIN\n") and res.stdout.endswith("\nEND\n")  # head and tail kept
    assert "bytes of stdout omitted" in res.stdout
    assert res.stderr == "tail of stderr\n"
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_no_network_from_inside(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import json, os, socket
ifaces = sorted(os.listdir("/sys/class/net"))
try:
    socket.getaddrinfo("pypi.org", 443)
    resolved = True
except OSError as e:
    resolved = False
print(json.dumps({"ifaces": ifaces, "resolved": resolved}))
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 0, res
    seen = json.loads(res.stdout)
    assert seen == {"ifaces": ["lo"], "resolved": False}
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_host_files_and_environment_are_invisible(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    os.environ["CAIRN_SENTINEL_SECRET"] = "sentinel-4f1c9a"
    try:
        code = f"""
import json, os
status = open("/proc/self/status").read()
print(json.dumps({{
    "env": dict(os.environ),
    "pid1_env": open("/proc/1/environ").read() if os.access("/proc/1/environ", os.R_OK) else "",
    "repo": os.path.exists({str(REPO)!r}),
    "docker_sock": os.path.exists("/var/run/docker.sock") or os.path.exists("/run/docker.sock"),
    "uid": os.getuid(),
    "cap_eff": [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")][0],
    "no_new_privs": [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")][0],
}}))
"""
        res = await run(sandbox_runner, tmp_path, code)
    finally:
        del os.environ["CAIRN_SENTINEL_SECRET"]
    assert res.exit_code == 0, res
    seen = json.loads(res.stdout)
    assert "sentinel-4f1c9a" not in res.stdout
    assert set(seen["env"]) <= set(SANDBOX_ENV) | {"HOSTNAME"}
    assert seen["repo"] is False and seen["docker_sock"] is False
    assert seen["uid"] == 10001
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_root_filesystem_is_read_only(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import errno
for path in ["/etc/evil", "/usr/lib/python3/dist-packages/evil.py", "/evil", "/var/tmp/evil"]:
    try:
        open(path, "w").write("x")
        print(path, "WRITTEN")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
open("/workspace/out/ok.txt", "w").write("allowed")
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 0, res
    assert "WRITTEN" not in res.stdout
    assert res.stdout.count("EROFS") == 4
    assert [a.name for a in res.artifacts] == ["ok.txt"]
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_failing_program_is_a_result_not_an_error(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    res = await run(sandbox_runner, tmp_path, "x = 1\nraise ValueError('boom')\n")
    assert res.exit_code == 1 and not res.ok
    assert 'File "/workspace/main.py", line 2' in res.stderr
    assert "ValueError: boom" in res.stderr and "sandbox_bootstrap" not in res.stderr
    assert res.error == "program exited with code 1"
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_happy_path_numpy_pandas_matplotlib_artifacts(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import os
import numpy as np
import pandas as pd
import matplotlib
import matplotlib.pyplot as plt
data = pd.read_csv("input/series.csv")
data["square"] = np.square(data["x"])
os.makedirs("out", exist_ok=True)
data.to_csv("out/table.csv", index=False)
fig, ax = plt.subplots()
ax.plot(data["x"], data["square"], label="x squared")
ax.legend()
fig.savefig("out/plot.png")
for name in sorted(os.listdir("out")):
    print(name, os.path.getsize(os.path.join("out", name)))
print("backend", matplotlib.get_backend())
"""
    files = {"input/series.csv": "x\n" + "\n".join(str(i) for i in range(10)) + "\n"}
    res = await run(sandbox_runner, tmp_path, code, files=files, step="analysis")
    assert res.exit_code == 0, res.stderr
    assert res.warm  # served by the pool
    sizes = dict(line.split() for line in res.stdout.splitlines() if not line.startswith("backend"))
    by_name = {a.name: a for a in res.artifacts}
    assert set(by_name) == {"plot.png", "table.csv"}
    for name, art in by_name.items():
        assert art.size == int(sizes[name]) > 0
        assert Path(art.path).parent == tmp_path / "out"
        assert _file_size(art.path) == art.size
    png = _read(by_name["plot.png"].path)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert by_name["plot.png"].media_type == "image/png" and by_name["plot.png"].preview is None
    assert by_name["table.csv"].preview is not None and by_name["table.csv"].preview.startswith(
        "x,square\n0,0\n"
    )
    assert "backend agg" in res.stdout.lower()
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_artifact_caps(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
import os
for i in range(25):
    open(f"out/f{i:02d}.txt", "w").write("x")
open("out/big.bin", "wb").write(b"y" * (9 * 1024 * 1024))
os.symlink("/etc/passwd", "out/link")
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 0, res
    assert len(res.artifacts) == sandbox_runner.config.max_artifacts
    reasons = {s.name: s.reason for s in res.artifacts_skipped}
    assert reasons["big.bin"].startswith("larger than")
    assert reasons["link"] == "not a regular file"
    assert any(r.startswith("too many artifacts") for r in reasons.values())
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_limits_are_set_in_the_containers_cgroup(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The kernel, not our code, enforces memory, swap, pids and CPU: read what it was told."""
    code = """
import json, os
def first(*paths):
    for p in paths:
        if os.path.exists(p):
            return open(p).read().strip()
    return None
print(json.dumps({
    "memory": first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    "memory_swap": first("/sys/fs/cgroup/memory.swap.max", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
    "pids": first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
    "cpu": first("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    "cpu_period": first("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
}))
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 0, res
    seen = json.loads(res.stdout)
    assert int(seen["memory"]) == 256 * MIB
    # v2 reports swap alone (0 = none); v1 reports memory+swap (equal to memory = none).
    assert int(seen["memory_swap"]) in (0, 256 * MIB)
    assert seen["pids"] == "64"
    if seen["cpu_period"] is None:
        quota, period = seen["cpu"].split()
    else:
        quota, period = seen["cpu"], seen["cpu_period"]
    assert int(quota) == int(period)  # 1.0 CPU
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_concurrent_runs_are_isolated(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    async def one(i: int) -> ExecResult:
        code = f"import os\nopen('/tmp/mine','w').write('{i}')\nprint(sorted(os.listdir('/tmp')), open('/tmp/mine').read())\n"
        return await sandbox_runner.run(ExecRequest(code=code), artifacts_dir=tmp_path / f"r{i}")

    results = await asyncio.gather(*(one(i) for i in range(4)))
    for i, res in enumerate(results):
        # Each run sees only its own /tmp (plus the matplotlib config dir the bootstrap made).
        assert res.stdout == f"['matplotlib', 'mine'] {i}\n", res
    assert sum(r.warm for r in results) >= 1
    await assert_only_pool_left(sandbox_runner, docker_client)


# -- the supervisor is out of the program's reach ---------------------------------------------------

# Each program tries one way into PID 1 (the supervisor that writes the report), prints what happened,
# and exits 3: if any attempt worked, the reported outcome would differ from the true one.
_LIBC = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def err():
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
"""
_FORGED = json.dumps(
    {"cairn_report": 1, "exit_code": 0, "timed_out": False, "duration_ms": 1, "stdout": {}, "stderr": {}}
)
_SUPERVISOR_ATTACKS = {
    "ptrace": _LIBC
    + """
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
for name, request in (("attach", 16), ("seize", 0x4206)):
    print(name, "ok" if libc.ptrace(request, 1, None, None) == 0 else err())
""",
    "proc_fd_and_mem": _LIBC
    + f"""
for path, mode in (("/proc/1/fd/1", "w"), ("/proc/1/fd/2", "w"), ("/proc/1/mem", "r+b")):
    try:
        with open(path, mode) as f:
            f.write({_FORGED!r} + "\\n" if "b" not in mode else b"x")
        print(path, "ok")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
""",
    "process_vm_and_stdin": _LIBC
    + """
class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local, remote = IOVec(ctypes.addressof(buf), 8), IOVec(ctypes.addressof(buf), 8)
for fn in ("process_vm_writev", "process_vm_readv"):
    n = getattr(libc, fn)(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    print(fn, "ok" if n >= 0 else err())
n = libc.syscall(438, os.pidfd_open(1), 1, 0)  # pidfd_getfd: a copy of PID 1's stdout
print("pidfd_getfd", "ok" if n >= 0 else err())
for path in ("/proc/1/fd/0", "/proc/1/environ", "/proc/1/fd", "/proc/1/cwd"):
    try:
        (os.listdir if path.endswith(("fd", "cwd")) else open)(path)
        print(path, "ok")
    except OSError as e:
        print(path, errno.errorcode[e.errno])
""",
}


@pytest.mark.parametrize("attack", sorted(_SUPERVISOR_ATTACKS))
async def test_program_cannot_reach_its_supervisor(
    attack: str, sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = _SUPERVISOR_ATTACKS[attack] + "open('out/true.txt', 'w').write('mine')\nsys.exit(3)\n"
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 3 and res.error == "program exited with code 3", res
    attempts = dict(line.rsplit(" ", 1) for line in res.stdout.splitlines())
    assert attempts and all(outcome in ("EPERM", "EACCES") for outcome in attempts.values()), attempts
    assert [a.name for a in res.artifacts] == ["true.txt"]
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_no_signal_reaches_the_supervisor(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The kernel drops signals to PID 1 that it has no handler for; it must have none to drop."""
    code = """
import os, signal, sys, time
for sig in range(1, signal.SIGRTMAX + 1):
    os.kill(1, sig)
time.sleep(0.5)
print("sent every signal")
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
except KeyboardInterrupt:
    print("my own SIGINT is still a KeyboardInterrupt")
sys.exit(3)
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 3, res
    assert res.stdout == "sent every signal\nmy own SIGINT is still a KeyboardInterrupt\n"
    assert res.error == "program exited with code 3"
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_program_inherits_nothing_of_its_supervisor(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """Only stdin (/dev/null) and the two output pipes; its own /proc entries stay usable."""
    code = """
import json, os
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}").split(":")[0]
    except FileNotFoundError:
        pass  # the directory listdir itself had open
print(json.dumps({
    "fds": fds,
    "oom_score_adj": open("/proc/self/oom_score_adj").read().strip(),
    "status_readable": "Uid:" in open("/proc/self/status").read(),
}))
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 0, res
    seen = json.loads(res.stdout)
    assert seen == {
        "fds": {"0": "/dev/null", "1": "pipe", "2": "pipe"},
        "oom_score_adj": "1000",
        "status_readable": True,
    }
    await assert_only_pool_left(sandbox_runner, docker_client)


# -- what the program leaves in out/ is bounded on the way to the model ------------------------------


def _assert_bounded(res: ExecResult, directory: Path) -> None:
    """Every name is printable and bounded, every stored file inside `directory`, and what the coder
    shows the model is under its cap."""
    for name in [a.name for a in res.artifacts] + [s.name for s in res.artifacts_skipped]:
        parts = name.split("/")
        assert name.isprintable() and len(parts) <= NAME_DEPTH, name
        assert all(len(p.encode()) <= NAME_PART_BYTES for p in parts), name
    root = directory.resolve()
    for art in res.artifacts:
        assert Path(art.path).is_relative_to(root) and Path(art.path).is_file()
    assert len({a.path for a in res.artifacts}) == len(res.artifacts)
    assert len(res.artifacts_skipped) <= MAX_SKIPPED_LISTED
    assert len(res.summary()) <= SUMMARY_CHARS
    assert len(describe(res)) <= DESCRIBE_CHARS


async def test_ten_thousand_files_in_out_are_counted_not_listed(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    code = """
for i in range(10_000):
    open(f"out/f{i:05d}.txt", "w").write(str(i))
print("wrote 10000")
"""
    res = await run(sandbox_runner, tmp_path, code, timeout_seconds=60)
    assert res.exit_code == 0 and res.stdout == "wrote 10000\n", res
    kept = sandbox_runner.config.max_artifacts
    assert [a.name for a in res.artifacts] == [f"f{i:05d}.txt" for i in range(kept)]
    assert [Path(a.path).read_text() for a in res.artifacts] == [str(i) for i in range(kept)]
    assert len(res.artifacts_skipped) == MAX_SKIPPED_LISTED
    assert len(res.artifacts_skipped) + res.artifacts_skipped_unlisted == 10_000 - kept
    assert res.artifacts_skipped[0].reason == f"too many artifacts (limit {kept})"
    assert f"{10_000 - kept - MAX_SKIPPED_LISTED} more" in res.summary()
    _assert_bounded(res, tmp_path / "out")
    await assert_only_pool_left(sandbox_runner, docker_client)


async def test_long_and_hostile_artifact_names_are_stored_sanitised(
    sandbox_runner: SandboxRunner, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """A 4,000-character path, control and bidi characters, bytes that are not UTF-8, file-system
    specials: the run keeps its result, every file is stored inside its directory under a clean name."""
    code = """
import os
deep = "out/" + "/".join(["d" * 200] * 19) + "/" + "n" * 180 + ".csv"
os.makedirs(os.path.dirname(deep))
open(deep, "w").write("deep")
for name in ["tab\\tnew\\nline.txt", "\\x1b[31mred.txt", "evil\\u202etxt.exe", "c:*?<>|`.txt"]:
    open("out/" + name, "w").write(name)
open(b"out/\\xff\\xfe.bin", "wb").write(b"bytes")
print(len(deep))
raise SystemExit(3)
"""
    res = await run(sandbox_runner, tmp_path, code)
    assert res.exit_code == 3 and int(res.stdout) > 4000, res
    by_name = {a.name: Path(a.path).read_bytes() for a in res.artifacts}
    (deep,) = [name for name in by_name if name.startswith("d")]
    # Cut in the middle, each component capped, the extension kept.
    assert deep.startswith("d" * 99 + "~/") and deep.endswith("/" + "n" * 95 + "~.csv")
    assert by_name == {
        "\ufffd\ufffd.bin": b"bytes",
        "_[31mred.txt": b"\x1b[31mred.txt",
        "c_______.txt": b"c:*?<>|`.txt",
        "evil_txt.exe": "evil\u202etxt.exe".encode(),
        "tab_new_line.txt": b"tab\tnew\nline.txt",
        deep: b"deep",
    }, sorted(by_name)
    _assert_bounded(res, tmp_path / "out")
    await assert_only_pool_left(sandbox_runner, docker_client)

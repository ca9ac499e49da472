"""The program every sandbox container runs as PID 1; its source is passed as `python3 -I -c SOURCE`.

Why this exists: the container's root file system is read-only and has no network, so the user's program
must arrive over the container's stdin. This bootstrap starts idle (that is what a warm-pool container
is), reads one JSON request from stdin until EOF, writes the input files and the program into the
/workspace tmpfs, forks, and runs the program in the child: fork, not exec, so a warm run pays no
interpreter start-up. The parent stays PID 1 and collects the child's output through pipes (keeping a
capped head and tail), enforces the wall-clock timeout, kills every leftover process, reads the cgroup's
OOM and pids counters and the files in /workspace/out, and writes ONE JSON report line to its stdout.

The program runs as the same uid as its supervisor, so the supervisor makes itself non-dumpable before
it forks: the kernel then refuses the program ptrace, /proc/1/mem and /proc/1/fd (the report's stdout),
which it would otherwise have as the owner. The kernel delivers a signal sent from inside the namespace
to its PID 1 only if PID 1 handles it, and the supervisor keeps no handler, so no signal reaches it.
The host still validates and caps the report and kills the container on its own deadline, because
nothing inside the container is trusted.

Must never: import anything outside Python's standard library (it runs in the minimal image), read the
program before the host sends it, write anything to its stdout except the single report line, run the
program while PID 1 is dumpable or handles a signal, or leave the program any descriptor but its stdin
and two pipes. The worker never imports this module; activities/sandbox/engine.py only reads its text.
"""

import base64
import ctypes
import json
import os
import selectors
import shutil
import signal
import stat
import sys
import time
import traceback

WORKSPACE = "/workspace"
OUT_DIR = "/workspace/out"
MPL_CACHE = "/usr/share/cairn/mplconfig"
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def _ignore_handled_signals():
    """Ignore every signal Python installed a handler for (SIGINT); returns those handlers.

    The kernel drops a signal sent to PID 1 from inside its namespace unless PID 1 handles it, so with
    no handler left no signal from the program can reach the supervisor.
    """
    handlers = {}
    for sig in signal.valid_signals():
        handler = signal.getsignal(sig)
        if callable(handler):
            handlers[sig] = handler
            signal.signal(sig, signal.SIG_IGN)
    return handlers


def _set_dumpable(value):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, value, 0, 0, 0) != 0 or libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != value:
        raise OSError(ctypes.get_errno(), f"prctl(PR_SET_DUMPABLE, {value}) failed")


def _prepare_idle():
    # Done before the request arrives, so a warm container has already paid for it.
    os.makedirs(OUT_DIR, exist_ok=True)
    mpl = os.environ.get("MPLCONFIGDIR")
    if mpl and os.path.isdir(MPL_CACHE) and not os.path.exists(mpl):
        shutil.copytree(MPL_CACHE, mpl)


def _read_request():
    data = sys.stdin.buffer.read()
    return json.loads(data)


def _write_inputs(req):
    for name, text in (req.get("files") or {}).items():
        path = os.path.normpath(os.path.join(WORKSPACE, name))
        if not path.startswith(WORKSPACE + "/") or path.startswith(OUT_DIR + "/"):
            raise ValueError("bad input path " + name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(WORKSPACE + "/main.py", "w", encoding="utf-8") as f:
        f.write(req["code"])


def _run_user_program(code_text):
    """Runs in the forked child; ends the process through SystemExit like a normal `python main.py`."""
    try:
        # A higher OOM score makes the kernel pick the program, not PID 1, when memory runs out.
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    os.chdir(WORKSPACE)
    sys.argv = ["main.py"]
    sys.path.insert(0, WORKSPACE)
    code = compile(code_text, WORKSPACE + "/main.py", "exec")
    env = {"__name__": "__main__", "__file__": WORKSPACE + "/main.py", "__builtins__": __builtins__}
    try:
        exec(code, env)
    except SystemExit:
        raise
    except BaseException as e:
        # Skip our own frame so the traceback starts in the user's program.
        tb = e.__traceback__
        traceback.print_exception(type(e), e, tb.tb_next if tb is not None else None)
        sys.exit(1)


class _Capture:
    """Keeps the first and last `cap // 2` bytes of a stream and counts the rest."""

    def __init__(self, cap):
        self.half = max(cap // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk):
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    def report(self):
        return {
            "head": base64.b64encode(bytes(self.head)).decode(),
            "tail": base64.b64encode(bytes(self.tail)).decode(),
            "total": self.total,
        }


# Wait statuses of every process PID 1 reaped, by pid: killing and reaping stragglers must not lose
# the main child's status.
_STATUSES: dict = {}


def _reap():
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _STATUSES[pid] = st


def _kill_everything_else(within=2.0):
    """SIGKILL every other process in the sandbox until none is left (or `within` seconds pass).

    As PID 1, kill(-1) reaches every other process, including daemonised ones; it is repeated because
    a process forked while the kernel walks the process list can escape one round (a fork bomb).
    """
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return
        except OSError:
            return
        _reap()
        time.sleep(0.002)
    _reap()


def _supervise(child_pid, readers, timeout):
    sel = selectors.DefaultSelector()
    for fd, cap in readers.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, cap)
    try:
        # Wakes us the moment the child exits; without pidfd (old kernel or seccomp) we poll.
        pidfd = os.pidfd_open(child_pid)
        sel.register(pidfd, selectors.EVENT_READ, None)
        idle_wait = 0.5
    except (AttributeError, OSError):
        pidfd, idle_wait = None, 0.01
    start = time.monotonic()
    deadline = start + timeout
    status, timed_out, drain_deadline = None, False, None
    open_fds = set(readers)
    # Until the program has exited AND its output pipes are closed (a program may close its stdout and
    # keep running; it is not done then).
    while open_fds or status is None:
        now = time.monotonic()
        if status is None and not timed_out and now >= deadline:
            timed_out = True
            _kill_everything_else()
            drain_deadline = now + 2.0
        if drain_deadline is not None and now >= drain_deadline:
            break  # a process stuck in the kernel holds a pipe open; report what we have
        limit = deadline if drain_deadline is None else drain_deadline
        for key, _ in sel.select(timeout=max(0.0, min(idle_wait, limit - now))):
            if key.data is None:
                continue  # pidfd: reaped below
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if chunk:
                key.data.add(chunk)
            else:
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
        _reap()
        if status is None and child_pid in _STATUSES:
            status = _STATUSES[child_pid]
            duration = time.monotonic() - start
            if pidfd is not None:
                sel.unregister(pidfd)
                os.close(pidfd)
                pidfd = None
            # The program is done: anything it left running must not keep the pipes open.
            _kill_everything_else()
            if drain_deadline is None:
                drain_deadline = time.monotonic() + 2.0
    if status is None:
        _kill_everything_else()
        status = _STATUSES.get(child_pid)
        if status is None:
            _, status = os.waitpid(child_pid, 0)
        duration = time.monotonic() - start
    _kill_everything_else()
    return status, timed_out, duration


def _cgroup_counter(paths, key):
    """Read `key N` from the first readable cgroup file (v2 path first, then v1); None if unknown."""
    for path in paths:
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        return int(parts[1])
        except OSError:
            continue
    return None


def _name_for_host(path, cap):
    """The name of an artifact as the host accepts it: valid Unicode (bytes that are not UTF-8 become
    U+FFFD, since JSON cannot carry them) of at most `cap` characters (a path may have 4,095 bytes)."""
    name = os.fsencode(os.path.relpath(path, OUT_DIR)).decode("utf-8", "replace")
    if len(name) <= cap:
        return name
    half = (cap - 1) // 2
    return name[:half] + "~" + name[-half:]  # keeps the file name's end, and so its extension


def _read_regular(path, limit):
    """The file's first `limit` bytes, or None if it is not a regular file (never follows a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit)


def _collect_artifacts(limits):
    """Kept artifacts, the first `max_skipped_listed` skipped ones, and how many more were skipped.

    Streams the walk, so a program that leaves a million files costs a count, not a list.
    """
    kept: list = []
    skipped: list = []
    unlisted = total = 0
    each, budget = limits["max_artifact_bytes"], limits["max_artifacts_total_bytes"]
    for root, dirs, files in os.walk(OUT_DIR, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = _name_for_host(path, limits["max_name_chars"])
            st = os.lstat(path)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode):
                reason, size = "not a regular file", 0
            elif len(kept) >= limits["max_artifacts"]:
                reason = "too many artifacts (limit {})".format(limits["max_artifacts"])
            elif size > each:
                reason = f"larger than {each} bytes"
            elif total + size > budget:
                reason = f"artifacts total over {budget} bytes"
            else:
                # Read no more than the limits allow, even if the file changed since lstat.
                data = _read_regular(path, min(each, budget - total))
                if data is not None:
                    total += len(data)
                    kept.append({"name": rel, "size": len(data), "data": base64.b64encode(data).decode()})
                    continue
                reason, size = "not a regular file", 0
            if len(skipped) < limits["max_skipped_listed"]:
                skipped.append({"name": rel, "size": size, "reason": reason})
            else:
                unlisted += 1
    return kept, skipped, unlisted


def _emit(report):
    data = (json.dumps(report, separators=(",", ":")) + "\n").encode()
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


def main():
    # First, before anything of the request is read: the program must never see a dumpable PID 1, nor
    # one with a signal handler.
    _set_dumpable(0)
    handlers = _ignore_handled_signals()
    _prepare_idle()
    req = _read_request()
    _write_inputs(req)
    limits = req["limits"]
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The program gets back what PID 1 gave up: dumpable, so it owns its own /proc entries
        # (oom_score_adj, /proc/self/fd), and Python's signal handlers. Neither changes PID 1.
        _set_dumpable(1)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.close(out_r)
        os.close(err_r)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # Nothing else of the supervisor's: not its stdin or report stream, nor any other descriptor.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        return req["code"]
    os.close(out_w)
    os.close(err_w)
    out, err = _Capture(limits["output_cap_bytes"]), _Capture(limits["output_cap_bytes"])
    status, timed_out, duration = _supervise(pid, {out_r: out, err_r: err}, float(req["timeout_seconds"]))
    oom = _cgroup_counter(
        ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"], "oom_kill"
    )
    pids_max = _cgroup_counter(["/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events"], "max")
    artifacts, skipped, unlisted = _collect_artifacts(limits)
    _emit(
        {
            "cairn_report": 1,
            "exit_code": os.waitstatus_to_exitcode(status),
            "timed_out": timed_out,
            "duration_ms": int(duration * 1000),
            "stdout": out.report(),
            "stderr": err.report(),
            "oom_kills": oom,
            "pids_max_events": pids_max,
            "artifacts": artifacts,
            "artifacts_skipped": skipped,
            "artifacts_skipped_unlisted": unlisted,
        }
    )
    return None


_code = main()
if _code is not None:
    # Only the forked child gets here: run the program at top level so SystemExit, atexit handlers and
    # stdout flushing behave exactly as under `python main.py`.
    _run_user_program(_code)

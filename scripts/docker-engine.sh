#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, for `make test-compose`:
#   - installs Debian's docker.io (the engine, containerd, runc, docker-init), debootstrap (for
#     scripts/standin-images.sh) and docker-compose with apt-get when they are missing;
#   - starts dockerd in the background (its own session, so it outlives this script and make) when
#     `docker info` gets no answer, and waits until it does.
# An engine that is already running (systemd's, Docker Desktop's, an earlier run's) is used as it is.
# Log: $DOCKERD_LOG (default /var/log/dockerd.log).
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need_apt+=(docker-compose)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "docker-engine: installing ${need_apt[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "docker-engine: starting dockerd in the background (log: $DOCKERD_LOG)" >&2
  # setsid + nohup: not a child of make's process group, so it keeps running after the target ends.
  $SUDO setsid nohup dockerd --storage-driver=overlay2 >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "docker-engine: dockerd did not answer within 60 s; last lines of $DOCKERD_LOG:" >&2
tail -n 30 "$DOCKERD_LOG" >&2 || true
exit 1

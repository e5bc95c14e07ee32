#!/usr/bin/env bash
# Installs what `make demo`, `make test` and `make bench` need on a fresh Debian machine:
# redis-server (and docker-compose, used only to validate compose.yaml) and prometheus (tests/test_metrics.py
# runs the dashboard's queries on it) via apt-get, chromium and chromium-driver for the browser test of
# Flower (tests/test_flower_browser.py, which skips if they can't be installed), a venv, the package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=""

apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
[ -x /usr/bin/prometheus ] || need_apt+=(prometheus)
# libfaketime: tests/test_reliability.py runs a worker whose wall clock is 90 s ahead of everyone else's
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ "$(uname -m)" != x86_64 ] || need_apt+=(faketime)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
  apt_install "${need_apt[@]}"
  # The packages start a system redis on 6379 and a Prometheus on 9090 where there is an init system;
  # our stacks and tests start their own.
  $SUDO service redis-server stop >/dev/null 2>&1 || true
  $SUDO service prometheus stop >/dev/null 2>&1 || true
fi

browser=()
command -v chromium >/dev/null 2>&1 || browser+=(chromium)
command -v chromedriver >/dev/null 2>&1 || browser+=(chromium-driver)
if [ ${#browser[@]} -gt 0 ]; then
  echo "bootstrap: installing ${browser[*]} with apt-get (the browser test of Flower)" >&2
  apt_install "${browser[@]}" || echo "bootstrap: could not install ${browser[*]}: tests/test_flower_browser.py will skip" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
# The pinned versions of requirements-dev.lock (`make lock` refreshes it from pyproject.toml), then the
# package itself without resolving anything again.
stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-dev.lock -nt "$stamp" ]; then
  echo "bootstrap: installing requirements-dev.lock and the package into $VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.lock
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi

#!/usr/bin/env bash
# Builds local stand-ins for the Docker Hub images that compose.yaml and the Dockerfile name, for
# machines that cannot reach Docker Hub (`make test-compose` runs this first). Nothing is ever pulled.
#
#   python:3.11-slim          Debian's python3.11 as a venv at /usr/local: `python`, `python3`, `pip`
#                             on PATH as in the official image; pip trusts this host's CAs and uses
#                             its package index settings, so `pip install` works in image builds here
#   redis:7                   Debian's redis-server 7 + redis-cli, with the official image's
#                             entrypoint conventions (args starting with `-` go to redis-server,
#                             drops to the redis user, /data as working directory and volume)
#   prom/prometheus:v2.42.0   Debian's prometheus 2.42 as /bin/prometheus, config at
#                             /etc/prometheus/prometheus.yml, data in /prometheus, runs as nobody
#
# How: debootstrap a minimal Debian (bookworm, minbase) from the mirror this host's apt uses, `docker
# import` it as bulk-summarize-standin/debian:bookworm (plus this host's CA bundle and apt sources),
# then `docker build` each stand-in on top with Debian's packages, tagged with the official name.
#
# Cached: the debootstrapped root file system is kept as a tarball in $STANDIN_CACHE (default
# /var/cache/bulk-summarize/standins) and every image tag that exists is kept. A stand-in is rebuilt
# only when its recipe (this script's Dockerfile text, the CA bundle, the pip settings) changed; a tag
# that is not one of our stand-ins (e.g. the real image, pulled elsewhere) is never touched.
# STANDIN_REBUILD=1 rebuilds every stand-in (not the cached root file system; delete the tarball for that).
#
# Needs root (debootstrap, chroot) and a Docker engine (scripts/docker-engine.sh starts one).
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${STANDIN_SUITE:-bookworm}
CACHE=${STANDIN_CACHE:-/var/cache/bulk-summarize/standins}
REBUILD=${STANDIN_REBUILD:-0}
CA_BUNDLE=${STANDIN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BASE_TAG=bulk-summarize-standin/debian:$SUITE
LABEL=org.bulk-summarize.standin

PYTHON_TAG=python:3.11-slim
REDIS_TAG=redis:7
PROMETHEUS_TAG=prom/prometheus:v2.42.0

log() { printf 'standin-images: %s\n' "$*" >&2; }
started=$SECONDS

bash scripts/docker-engine.sh
# The legacy builder: the Docker CLI here may have no buildx plugin; nothing below needs BuildKit.
export DOCKER_BUILDKIT=0

# --- where this host's apt gets Debian from --------------------------------------------------------
# Prints the first URI serving suite $1 in /etc/apt/sources.list{,.d/*.list,.d/*.sources}.
host_mirror() {
  local want=$1 files=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  awk -v want="$want" '
    function flush() {
      if (!done && uri != "" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " want " ")) {
        print uri; done = 1
      }
      uri = ""; suites = ""; types = ""
    }
    FNR == 1 { flush() }
    /^[ \t]*#/ { next }
    /^[ \t]*$/ { flush(); next }
    /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0; next }
    /^URIs:/ { sub(/^URIs:[ \t]*/, ""); split($0, u, /[ \t]+/); uri = u[1]; next }
    /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0; next }
    /^deb[ \t]/ {
      line = $0; sub(/^deb[ \t]+/, "", line); gsub(/\[[^]]*\][ \t]*/, "", line)
      split(line, f, /[ \t]+/)
      if (!done && f[2] == want) { print f[1]; done = 1 }
    }
    END { flush() }
  ' "${files[@]}"
}

MIRROR=${STANDIN_MIRROR:-$(host_mirror "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${STANDIN_SECURITY_MIRROR:-$(host_mirror "$SUITE-security")}
# The host's apt proxy, if it has one, for debootstrap and for apt-get inside the builds.
APT_PROXY=$(apt-config shell P Acquire::http::Proxy 2>/dev/null | sed -n "s/^P='\(.*\)'$/\1/p")
proxy_args=()
if [ -n "$APT_PROXY" ]; then
  proxy_args=(--build-arg "http_proxy=$APT_PROXY")
fi

is_tag() { docker image inspect "$1" >/dev/null 2>&1; }
label_of() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }

# --- the base: debootstrap once, import ------------------------------------------------------------
rootfs_tar="$CACHE/debian-$SUITE-minbase.tar"
if [ "$REBUILD" = 1 ] || ! is_tag "$BASE_TAG"; then
  if [ ! -s "$rootfs_tar" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
      log "installing debootstrap with apt-get"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    t0=$SECONDS
    log "debootstrap $SUITE (minbase) from $MIRROR into $rootfs"
    http_proxy=${APT_PROXY:-${http_proxy:-}} debootstrap --variant=minbase --include=ca-certificates \
      "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
      tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
    # What Debian's official images do: no services started by package scripts, no recommends,
    # no caches or lists left in the image.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
      >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
    printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' \
      >"$rootfs/etc/apt/apt.conf.d/docker-clean"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
      "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    tar -C "$rootfs" --numeric-owner -cf "$rootfs_tar.tmp" .
    mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$rootfs"; trap - EXIT
    log "debootstrap took $((SECONDS - t0)) s; root file system cached in $rootfs_tar"
  fi
  log "importing $rootfs_tar as $BASE_TAG"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    "$rootfs_tar" "$BASE_TAG" >/dev/null
  REBUILD=1   # a new base: every stand-in on the old one is stale
fi

# --- the build context every stand-in shares -------------------------------------------------------
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/host-ca"
# One file per certificate of the host's bundle (the corporate/MITM CA included); update-ca-certificates
# adds them to the image's bundle next to Debian's own.
awk -v dir="$ctx/host-ca" '
  /-----BEGIN CERTIFICATE-----/ { n++; f = sprintf("%s/host-%03d.crt", dir, n) }
  f { print > f }
  /-----END CERTIFICATE-----/ { close(f); f = "" }
' "$CA_BUNDLE"

{
  echo "deb $MIRROR $SUITE main"
  echo "deb $MIRROR $SUITE-updates main"
  [ -z "$SECURITY_MIRROR" ] || echo "deb $SECURITY_MIRROR $SUITE-security main"
} >"$ctx/sources.list"

# pip inside the images: the host's CA bundle is installed system-wide, so `cert` points at the
# image's bundle; index settings are the host's (pip config + PIP_* environment), leaving out
# file:// indexes and find-links that exist only on this host's disk.
host_pip() {  # prints the host's value of a pip setting ($1: config key, $2: environment variable)
  local v=${!2:-}
  if [ -z "$v" ] && command -v pip3 >/dev/null 2>&1; then
    v=$(pip3 config list 2>/dev/null | sed -n "s/^[a-z]*\.$1='\(.*\)'$/\1/p" | tail -n 1)
  fi
  printf '%s' "$v"
}
network_only() { tr ' ' '\n' | grep -E '^https?://' | tr '\n' ' ' | sed 's/ $//' || true; }
{
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  index_url=$(host_pip index-url PIP_INDEX_URL | network_only)
  extra_urls=$(host_pip extra-index-url PIP_EXTRA_INDEX_URL | network_only)
  trusted=$(host_pip trusted-host PIP_TRUSTED_HOST)
  timeout=$(host_pip timeout PIP_DEFAULT_TIMEOUT)
  [ -z "$index_url" ] || echo "index-url = $index_url"
  [ -z "$extra_urls" ] || echo "extra-index-url = $extra_urls"
  [ -z "$trusted" ] || echo "trusted-host = $trusted"
  [ -z "$timeout" ] || echo "timeout = $timeout"
} >"$ctx/pip.conf"

cat >"$ctx/redis-entrypoint.sh" <<'EOF'
#!/bin/sh
# The official redis image's entrypoint, with setpriv for gosu.
set -e
# first arg is `-f` or `--some-option`, or a `something.conf`: run redis-server with them
if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
  set -- redis-server "$@"
fi
# started as root: own /data, then run as the redis user
if [ "$1" = 'redis-server' ] && [ "$(id -u)" = '0' ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
# the official build turns protected mode off by default (Debian's binary has it on)
if [ "$1" = 'redis-server' ]; then
  case " $* " in *" --protected-mode "*) ;; *) set -- "$@" --protected-mode no ;; esac
fi
um="$(umask)"
if [ "$um" = '0022' ]; then
  umask 0077
fi
exec "$@"
EOF

# Common first steps: this host's CAs and the same Debian mirror as the host.
common_head() {
  cat <<EOF
FROM $BASE_TAG
ARG http_proxy
COPY host-ca/ /usr/local/share/ca-certificates/host/
COPY sources.list /etc/apt/sources.list
RUN update-ca-certificates >/dev/null
EOF
}

python_dockerfile() {
  common_head
  cat <<'EOF'
# python3.11 from Debian; a venv at /usr/local puts python, python3, pip, pip3 in /usr/local/bin
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /usr/local
COPY pip.conf /etc/pip.conf
RUN python -m pip install --no-cache-dir --quiet --upgrade pip setuptools wheel \
 && python --version && pip --version
CMD ["python3"]
EOF
}

redis_dockerfile() {
  common_head
  cat <<'EOF'
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data \
 && redis-server --version && redis-cli --version
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
}

prometheus_dockerfile() {
  common_head
  cat <<'EOF'
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus /etc/prometheus \
 && chown nobody:nogroup /prometheus \
 && /bin/prometheus --version
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
}

# Builds stand-in $1 from Dockerfile function $2 unless an up-to-date one (or a real image) has the tag.
build_standin() {
  local tag=$1 recipe=$2 dockerfile="$ctx/Dockerfile.$2" digest current t0
  "$recipe" >"$dockerfile"
  digest=$(cat "$dockerfile" "$ctx/sources.list" "$ctx/pip.conf" "$ctx/redis-entrypoint.sh" \
    "$ctx"/host-ca/* | sha256sum | cut -c1-16)
  if is_tag "$tag"; then
    current=$(label_of "$tag")
    if [ -z "$current" ]; then
      log "$tag exists and is not a stand-in: kept as it is"
      return 0
    fi
    if [ "$current" = "$digest" ] && [ "$REBUILD" != 1 ]; then
      log "$tag: up to date (cached)"
      return 0
    fi
  fi
  t0=$SECONDS
  log "building $tag"
  printf 'LABEL %s="%s"\n' "$LABEL" "$digest" >>"$dockerfile"
  if ! docker build -q ${proxy_args[@]+"${proxy_args[@]}"} -f "$dockerfile" -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
    cat "$ctx/build.log" >&2
    log "building $tag failed"
    exit 1
  fi
  log "built $tag in $((SECONDS - t0)) s"
}

build_standin "$PYTHON_TAG" python_dockerfile
build_standin "$REDIS_TAG" redis_dockerfile
build_standin "$PROMETHEUS_TAG" prometheus_dockerfile
docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
log "stand-ins ready in $((SECONDS - started)) s: $PYTHON_TAG $REDIS_TAG $PROMETHEUS_TAG"

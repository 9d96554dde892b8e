#!/usr/bin/env bash
# Install everything cdcd and its test suite need on a Debian 12 machine (run as root; idempotent):
#   - PostgreSQL 15 + server headers, Redis, build tools (Debian packages)
#   - TimescaleDB 2.19.3 (Apache-2 part) built from Debian's source package against PostgreSQL 15
#   - cdcd itself, editable, with its dev extras (pytest, ruff, mypy, hypothesis, chdb for ClickHouse tests)
# Usage: bash deploy/install.sh            (set CDCD_SKIP_SYSTEM=1 to only do the Python part)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[install] %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

TSDB_VERSION=2.19.3
TSDB_SHA256=09fd11191768c220b071f61a108df9bd1df5522fbe4e7c2229f30f69b195454a
PG_MAJOR=15

if [ "${CDCD_SKIP_SYSTEM:-0}" != 1 ]; then
  need=()
  for pkg in postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR postgresql-server-dev-$PG_MAJOR redis-server \
             cmake make gcc xz-utils curl ca-certificates; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi

  PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
  if [ ! -f "$($PG_CONFIG --pkglibdir)/timescaledb.so" ]; then
    log "building TimescaleDB $TSDB_VERSION (Apache-2 part) from Debian's source package"
    work=$(mktemp -d)
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
    tarball="timescaledb_${TSDB_VERSION}+dfsg.orig.tar.xz"
    curl -fsSL -o "$work/$tarball" "${mirror%/}/pool/main/t/timescaledb/timescaledb_${TSDB_VERSION}%2Bdfsg.orig.tar.xz"
    echo "$TSDB_SHA256  $work/$tarball" | sha256sum -c --quiet
    tar -C "$work" -xf "$work/$tarball"
    src=$(find "$work" -maxdepth 1 -type d -name 'timescaledb*' | head -1)
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPG_CONFIG="$PG_CONFIG" \
      -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF -DAPACHE_ONLY=1 \
      -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF >"$work/cmake.log" 2>&1 \
      || { cat "$work/cmake.log"; exit 1; }
    make -C "$src/build" -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -50 "$work/make.log"; exit 1; }
    $SUDO make -C "$src/build" install >/dev/null
    rm -rf "$work"
  fi
fi

log "pip install -e .[dev]"
python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
log "done: $(command -v cdcd) $(cdcd --version 2>/dev/null || echo '(cdcd CLI not importable yet)')"

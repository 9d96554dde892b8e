#!/usr/bin/env bash
# Install cdcd and everything its demo and test suite need on a Debian 12 machine (run as root;
# idempotent, run it again after pulling new code):
#   - PostgreSQL 15 + server headers, Redis, build tools, python3 + venv, systemd (Debian packages)
#   - TimescaleDB 2.19.3 (Apache-2 part) built from Debian's source package against PostgreSQL 15,
#     and preloaded (shared_preload_libraries) in Debian's default cluster 15/main when it exists
#   - cdcd in its own virtual environment, /opt/cdcd/venv (not an editable install: the service
#     must not need the clone), with its dev extras (pytest, ruff, mypy, hypothesis, chdb for the
#     ClickHouse tests); /usr/local/bin/cdcd links to its `cdcd` command
#   - what deploy/cdcd.service uses: the system user and group cdcd, /etc/cdcd/cdcd.toml (a copy of
#     cdcd.toml.example, never overwritten), /etc/cdcd/cdcd.env (secrets, root-only, read by
#     systemd), /usr/share/doc/cdcd/ and the unit itself in /etc/systemd/system (not enabled)
# Usage: bash deploy/install.sh
# Environment:
#   PYTHON=python3             the interpreter that builds the virtual environment
#   CDCD_VENV=/opt/cdcd/venv   where the virtual environment goes
#   CDCD_EXTRAS=dev            extras installed with cdcd ("" for the daemon alone)
#   CDCD_SKIP_SYSTEM=1         only the Python part (the virtual environment and cdcd in it)
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022
log() { printf '[install] %s\n' "$*"; }
warn() { printf '[install] WARNING: %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

PYTHON=${PYTHON:-python3}
VENV=${CDCD_VENV:-/opt/cdcd/venv}
EXTRAS=${CDCD_EXTRAS-dev}
SKIP_SYSTEM=${CDCD_SKIP_SYSTEM:-0}
TSDB_VERSION=2.19.3
TSDB_SHA256=09fd11191768c220b071f61a108df9bd1df5522fbe4e7c2229f30f69b195454a
PG_MAJOR=15
COMPOSE_VERSION=v5.6.0

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_install() {
  log "apt-get install $*"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ------------------------------------------------------------------------------ Debian packages
if [ "$SKIP_SYSTEM" != 1 ]; then
  need=()
  for pkg in postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR postgresql-server-dev-$PG_MAJOR redis-server \
             cmake make gcc xz-utils curl ca-certificates python3 python3-venv systemd; do
    installed "$pkg" || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
  # The test suite's own tools (with the dev extras): promtool and prometheus check the alert rules
  # and the dashboard's queries, headless chromium loads the status page.
  if [[ ",$EXTRAS," == *,dev,* ]]; then
    need=()
    for pkg in prometheus chromium; do installed "$pkg" || need+=("$pkg"); done
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
    # `docker compose config` checks compose.yaml. The machine has the docker client but not its
    # compose plugin: build it from the Go module proxy (a few minutes, once).
    if command -v docker >/dev/null && command -v go >/dev/null && ! docker compose version >/dev/null 2>&1; then
      log "building the docker compose CLI plugin $COMPOSE_VERSION (go build, a few minutes)"
      work=$(mktemp -d)
      ( cd "$work" && go mod init compose-build >/dev/null 2>&1 \
        && go get "github.com/docker/compose/v5/cmd@$COMPOSE_VERSION" >"$work/get.log" 2>&1 \
        && go build -o docker-compose github.com/docker/compose/v5/cmd >"$work/build.log" 2>&1 ) \
        || { tail -20 "$work"/*.log; exit 1; }
      $SUDO install -D -m 0755 "$work/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
      rm -rf "$work"
    fi
  fi

  # ---------------------------------------------------------------------------- TimescaleDB
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

  # TimescaleDB only works when the server preloads it. Debian's default cluster (created with the
  # postgresql package) gets a conf.d file that adds it to whatever else is preloaded there.
  conf_dir=/etc/postgresql/$PG_MAJOR/main
  if [ -f "$conf_dir/postgresql.conf" ]; then
    preloaded() {
      $SUDO runuser -u postgres -- "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" \
        --config-file="$conf_dir/postgresql.conf" -C shared_preload_libraries
    }
    current=$(preloaded)
    if ! tr -d " '\"" <<<"$current" | tr ',' '\n' | grep -qx timescaledb; then
      value=timescaledb; [ -z "${current// /}" ] || value="$current,timescaledb"
      log "PostgreSQL $PG_MAJOR/main: shared_preload_libraries = '$value' ($conf_dir/conf.d/timescaledb.conf)"
      $SUDO install -d -m 0755 -o postgres -g postgres "$conf_dir/conf.d"
      printf "# Written by cdcd's deploy/install.sh: TimescaleDB must be preloaded.\nshared_preload_libraries = '%s'\n" \
        "$value" | $SUDO tee "$conf_dir/conf.d/timescaledb.conf" >/dev/null
      $SUDO chown postgres:postgres "$conf_dir/conf.d/timescaledb.conf"
      tr -d " '\"" <<<"$(preloaded)" | tr ',' '\n' | grep -qx timescaledb \
        || { echo "[install] a later setting in $conf_dir overrides shared_preload_libraries" >&2; exit 1; }
      if pg_lsclusters -h 2>/dev/null | awk -v v="$PG_MAJOR" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
        log "restarting PostgreSQL $PG_MAJOR/main to load TimescaleDB"
        $SUDO pg_ctlcluster "$PG_MAJOR" main restart
      fi
    fi
  else
    log "no Debian cluster $PG_MAJOR/main: add shared_preload_libraries = 'timescaledb' to your server's configuration"
  fi
fi

# ------------------------------------------------------------------------------ virtual environment
# Debian's own python3 refuses `pip install` into itself (PEP 668, "externally managed"), and the
# service must not depend on a clone under /root: cdcd gets a virtual environment of its own.
py_id='import os, sys; print(os.path.realpath(sys.base_prefix), sys.version.split()[0])'
want=$("$PYTHON" -c "$py_id") || { echo "[install] cannot run PYTHON=$PYTHON" >&2; exit 1; }
base_prefix=${want% *}
if [ "$base_prefix" = /usr ] && command -v dpkg-query >/dev/null; then
  # Debian splits `venv` (ensurepip and its wheels) into pythonX.Y-venv.
  venv_pkg=$("$PYTHON" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')
  installed "$venv_pkg" || apt_install "$venv_pkg"
fi
have=$("$VENV/bin/python" -c "$py_id" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  if [ -e "$VENV" ]; then
    [ -f "$VENV/pyvenv.cfg" ] || { echo "[install] $VENV exists and is not a virtual environment" >&2; exit 1; }
    log "rebuilding $VENV (it was made by another interpreter)"
    $SUDO rm -rf "$VENV"
  fi
  log "creating $VENV with $PYTHON (Python ${want#* } in $base_prefix)"
  $SUDO "$PYTHON" -m venv "$VENV"
fi
spec=.; [ -z "$EXTRAS" ] || spec=".[$EXTRAS]"
# setuptools builds in ./build and never removes files deleted since: a stale module would ship.
rm -rf build
log "pip install $spec into $VENV"
$SUDO "$VENV/bin/python" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$spec"
rm -rf build
version=$("$VENV/bin/cdcd" --version)

# ------------------------------------------------------------------------------ service layout
if [ "$SKIP_SYSTEM" != 1 ]; then
  # What deploy/cdcd.service names: User/Group cdcd, ExecStart /usr/local/bin/cdcd,
  # --config /etc/cdcd/cdcd.toml, EnvironmentFile /etc/cdcd/cdcd.env, Documentation README.
  getent group cdcd >/dev/null || $SUDO groupadd --system cdcd
  getent passwd cdcd >/dev/null || $SUDO useradd --system --gid cdcd --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin --comment "cdcd replication daemon" cdcd
  $SUDO ln -sfn "$VENV/bin/cdcd" /usr/local/bin/cdcd
  $SUDO install -d -m 0750 -o root -g cdcd /etc/cdcd
  if [ ! -e /etc/cdcd/cdcd.toml ]; then
    log "/etc/cdcd/cdcd.toml: a copy of cdcd.toml.example (edit it)"
    $SUDO install -m 0640 -o root -g cdcd cdcd.toml.example /etc/cdcd/cdcd.toml
  fi
  if [ ! -e /etc/cdcd/cdcd.env ]; then
    log "/etc/cdcd/cdcd.env: secrets for the service (root only; fill it in)"
    token=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    $SUDO install -m 0600 -o root -g root /dev/null /etc/cdcd/cdcd.env
    $SUDO tee /etc/cdcd/cdcd.env >/dev/null <<EOF
# Secrets of cdcd.service, one NAME=value per line. systemd reads this file (as root) and passes
# the variables to cdcd, whose /etc/cdcd/cdcd.toml refers to them as \${NAME}.
CDCD_ADMIN_TOKEN=$token
# PG_DSN=postgresql://cdcd:PASSWORD@db.example.com:5432/analytics
# TS_DSN=postgresql://cdcd:PASSWORD@tsdb.example.com:5432/metrics
# CH_PASSWORD=PASSWORD
EOF
  fi
  $SUDO chown root:root /etc/cdcd/cdcd.env
  $SUDO chmod 0600 /etc/cdcd/cdcd.env
  $SUDO install -d -m 0755 /usr/share/doc/cdcd
  $SUDO install -m 0644 README.md cdcd.toml.example /usr/share/doc/cdcd/
  $SUDO install -m 0644 deploy/cdcd.service /etc/systemd/system/cdcd.service
  [ ! -d /run/systemd/system ] || $SUDO systemctl daemon-reload
  # ProtectHome=true hides /root, /home and /run/user from the service, and User=cdcd cannot
  # enter /root anyway: a virtual environment made from an interpreter there cannot run it.
  case "$base_prefix/" in
    /root/* | /home/* | /run/user/*)
      warn "$VENV uses the Python in $base_prefix, which cdcd.service (User=cdcd, ProtectHome=true) cannot" \
           "reach; for the service, run: PYTHON=/usr/bin/python3 bash deploy/install.sh" ;;
    *)
      $SUDO runuser -u cdcd -- /usr/local/bin/cdcd --version >/dev/null \
        || warn "user cdcd cannot run /usr/local/bin/cdcd ($VENV)" ;;
  esac
  log "service: edit /etc/cdcd/cdcd.toml and /etc/cdcd/cdcd.env, then: systemctl enable --now cdcd"
fi
log "done: $VENV/bin/cdcd ($version)"
case ",$EXTRAS," in *,dev,*) log "tests: $VENV/bin/python -m pytest (from the clone)" ;; esac

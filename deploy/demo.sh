#!/usr/bin/env bash
# shellcheck disable=SC2317  # on_signal and cleanup run from traps
# A complete local run in one command: the Scylla CDC emulator (tests/scylla_emulator), Redis and a
# throwaway PostgreSQL on free ports, a sample CDC table `shop.orders` with a trickle of writes, and
#   cdcd run --config deploy/demo/cdcd.toml
# (this clone's code, run by /opt/cdcd/venv's Python) in the foreground, its HTTP endpoint on a free
# port. The URLs, the PostgreSQL DSN and a random admin token are printed first.
#
# Ctrl-C (or SIGTERM to this script) goes to cdcd alone: it drains in-flight batches, saves its
# checkpoints and exits; only then are the traffic generator, the emulator, Redis and PostgreSQL
# stopped (each runs in a session of its own, so the terminal's Ctrl-C never reaches them). A second
# Ctrl-C is passed on as well: cdcd then exits at once (it resumes from its checkpoints next time).
# Environment: CDCD_PYTHON (default: $CDCD_VENV/bin/python, CDCD_VENV=/opt/cdcd/venv; python3 when
# that does not exist), TMPDIR (where the demo's files go; removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CDCD_VENV:-/opt/cdcd/venv}
PY=${CDCD_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$VENV/bin/python" ]; then PY=$VENV/bin/python; else PY=python3; fi
fi
PGBIN=/usr/lib/postgresql/15/bin
work=$(mktemp -d "${TMPDIR:-/tmp}/cdcd-demo.XXXXXX")
chmod 755 "$work"
helpers=()   # traffic generator, emulator, Redis: each the leader of its own session
cdcd_pid=""
interrupted=0

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Signals to the script: passed on to cdcd once it runs; before that, they end the demo.
on_signal() {
  interrupted=1
  if [ -n "$cdcd_pid" ]; then
    kill -s "$1" "$cdcd_pid" 2>/dev/null || true
  else
    exit 130
  fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM HUP

cleanup() {
  trap '' INT TERM HUP
  local p
  if [ -n "$cdcd_pid" ]; then  # the script is ending some other way while cdcd runs: stop it first
    kill -TERM "$cdcd_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$cdcd_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  for p in "${helpers[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  if [ -f "$work/pg/data/postmaster.pid" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$work/pg/data" -m fast -w -t 10 stop >/dev/null 2>&1 || true
  fi
  for _ in $(seq 50); do
    local alive=0
    for p in "${helpers[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 0.1
  done
  for p in "${helpers[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
DEMO_SCYLLA_PORT=$(port); DEMO_REDIS_PORT=$(port); DEMO_HTTP_PORT=$(port); PG_PORT=$(port)
CDCD_ADMIN_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
PG_DSN="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
export DEMO_SCYLLA_PORT DEMO_REDIS_PORT DEMO_HTTP_PORT CDCD_ADMIN_TOKEN PG_DSN

setsid redis-server --port "$DEMO_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" & helpers+=($!)

mkdir -p "$work/pg"
[ "$(id -u)" -ne 0 ] || chown -R postgres:postgres "$work/pg"
as_pg "$PGBIN/initdb" -D "$work/pg/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
  -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pg" start >/dev/null

setsid "$PY" -m tests.scylla_emulator --host 127.0.0.1 --port "$DEMO_SCYLLA_PORT" >"$work/emulator.log" 2>&1 &
helpers+=($!)
"$PY" - <<PY
import time
from cassandra.cluster import Cluster
for _ in range(100):
    try:
        s = Cluster(["127.0.0.1"], port=$DEMO_SCYLLA_PORT, protocol_version=4).connect(); break
    except Exception:
        time.sleep(0.1)
s.execute("CREATE KEYSPACE shop WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
s.execute("""CREATE TABLE shop.orders (customer int, order_id int, status text, total decimal,
             items map<text, int>, tags set<text>, PRIMARY KEY (customer, order_id))
             WITH cdc = {'enabled': true}""")
PY
for _ in $(seq 100); do redis-cli -p "$DEMO_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# A trickle of inserts, updates and deletes (a few per second) while cdcd runs.
setsid "$PY" - >"$work/traffic.log" 2>&1 <<PY &
import random, time
from decimal import Decimal
from cassandra.cluster import Cluster
s = Cluster(["127.0.0.1"], port=$DEMO_SCYLLA_PORT, protocol_version=4).connect("shop")
ins = s.prepare("INSERT INTO orders (customer, order_id, status, total, items, tags) VALUES (?, ?, 'new', ?, ?, ?)")
upd = s.prepare("UPDATE orders SET status = ?, tags = tags + ? WHERE customer = ? AND order_id = ?")
dele = s.prepare("DELETE FROM orders WHERE customer = ? AND order_id = ?")
n = 0
while True:
    n += 1
    c, o = random.randrange(20), random.randrange(50)
    r = random.random()
    if r < 0.6:
        s.execute(ins, (c, o, Decimal(random.randrange(10000)) / 100, {"book": random.randrange(1, 4)}, {"web"}))
    elif r < 0.9:
        s.execute(upd, (random.choice(["paid", "shipped"]), {"vip"}, c, o))
    else:
        s.execute(dele, (c, o))
    time.sleep(0.2)
PY
helpers+=($!)

http="http://127.0.0.1:$DEMO_HTTP_PORT"
cat <<EOF
demo: PostgreSQL   $PG_DSN   (try: psql "$PG_DSN" -c 'table analytics.orders')
demo: status       $http/status
demo: readiness    $http/readyz
demo: liveness     $http/healthz
demo: metrics      $http/metrics
demo: admin token  $CDCD_ADMIN_TOKEN   (exported as CDCD_ADMIN_TOKEN)
demo: flush        curl -X POST -H 'Authorization: Bearer $CDCD_ADMIN_TOKEN' $http/admin/checkpoints/flush
demo: Ctrl-C stops cdcd (it drains and saves its checkpoints), then the rest of the demo
EOF

# cdcd in a session of its own too: the terminal's Ctrl-C reaches only this script, which passes it
# on once (see on_signal); a second Ctrl-C is passed on again and makes cdcd exit at once.
setsid "$PY" -m cdcd run --config deploy/demo/cdcd.toml &
cdcd_pid=$!
while :; do
  interrupted=0
  rc=0; wait "$cdcd_pid" || rc=$?
  # A signal cuts `wait` short (status > 128) while cdcd drains: wait again for its own status.
  if [ "$interrupted" != 1 ] || [ "$rc" -le 128 ]; then break; fi
done
cdcd_pid=""
exit "$rc"

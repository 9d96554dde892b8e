#!/usr/bin/env bash
# A complete local run in one command: the Scylla CDC emulator (tests/scylla_emulator), Redis and a
# throwaway PostgreSQL on free ports, a sample CDC table `shop.orders` with a trickle of writes, and
#   cdcd run --config deploy/demo/cdcd.toml
# in the foreground. Watch http://127.0.0.1:8088/status and `psql "$PG_DSN" -c 'table analytics.orders'`
# (the DSN is printed). Ctrl-C stops cdcd (draining and checkpointing) and everything else.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/cdcd-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/pg/data/postmaster.pid" ] && kill -INT "$(head -1 "$work/pg/data/postmaster.pid")" 2>/dev/null || true
  sleep 1; rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export DEMO_SCYLLA_PORT=$(port) DEMO_REDIS_PORT=$(port)
PG_PORT=$(port)

redis-server --port "$DEMO_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" & pids+=($!)

PGBIN=/usr/lib/postgresql/15/bin
mkdir -p "$work/pg"; chmod 755 "$work"
as_pg() { if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$work/pg"; runuser -u postgres -- "$@"; else "$@"; fi; }
as_pg "$PGBIN/initdb" -D "$work/pg/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w \
  -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pg" start >/dev/null
export PG_DSN="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"

python3 -m tests.scylla_emulator --host 127.0.0.1 --port "$DEMO_SCYLLA_PORT" >"$work/emulator.log" 2>&1 & pids+=($!)
python3 - <<PY
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

# A trickle of inserts, updates and deletes (a few per second) while cdcd runs.
python3 - >"$work/traffic.log" 2>&1 <<PY &
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
pids+=($!)

echo "demo: PostgreSQL  $PG_DSN   (try: psql \"$PG_DSN\" -c 'table analytics.orders')"
echo "demo: status      http://127.0.0.1:8088/status"
cdcd run --config deploy/demo/cdcd.toml

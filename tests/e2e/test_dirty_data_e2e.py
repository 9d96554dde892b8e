"""Dirty data end to end (issue 9; R-20, R-23, R-31): ``cdcd run`` replicating into a PostgreSQL
table and a ClickHouse table the user created with narrower types, constraints and config rules,
under a random workload with about 5% dirty values; then the operator's ``cdcd dlq`` commands.

Shown here, on the emulator, PostgreSQL, ClickHouse and Redis:

* every good row is present and exact in both destinations, every bad change is in that
  destination's validation queue with its columns, rule and reason, and none of them is applied
  (what is bad depends on the destination: ``varchar(12)`` refuses 13-character names that
  ClickHouse's ``LowCardinality(String)`` takes);
* a good row written right after a bad one is visible in both destinations within 5 s;
* ``cdcd dlq list --json`` / ``edit`` / ``retry`` lands corrected rows; a ``kill -9`` of a retry
  in the middle (an entry marked in flight) and a second retry apply every entry once; a
  correction older than the row's current state is skipped and recorded in the ``stale`` queue;
* an undecodable CDC log group lands in the dead-letter queue of both destinations with its raw
  log rows.
"""

from __future__ import annotations

import decimal
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import clickhouse_connect
import redis

from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ROOT, CdcdProcess, ConfigOptions, TableSpec, wait_for

D = decimal.Decimal
CLEAN_STATES = ("new", "paid", "sent")
SCHEMA = [
    "CREATE KEYSPACE dirty WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}",
    "CREATE TABLE dirty.orders (id int PRIMARY KEY, name text, amount decimal, qty bigint, code text, "
    "state text, internal text) WITH cdc = {'enabled': true}",
]
PG_DDL = """
CREATE SCHEMA {db};
CREATE TABLE {db}.orders (
    id integer PRIMARY KEY,
    name varchar(12) NOT NULL,
    amount numeric(8,2),
    qty smallint CHECK (qty >= 0),
    code varchar(3),
    state text CHECK (state IN ('new', 'paid', 'sent')),
    created timestamptz NOT NULL DEFAULT now()
);
"""
CH_META = (
    "_cdc_version UInt64, _cdc_is_deleted UInt8, _cdc_deleted UInt8, "
    "_cdc_deleted_at Nullable(DateTime64(6, 'UTC')), _cdc_row_marker UInt8, _cdc_empty Array(String)"
)
TABLE_EXTRA = """on_invalid = "skip"
ignore_columns = ["internal"]
[tables.columns.qty]
min = 0
[tables.columns.name]
pattern = "[A-Za-z][A-Za-z ]*"
"""

# dirty kinds: column, value, bad in PostgreSQL, bad in ClickHouse
DIRTY: list[tuple[str, Any, bool, bool]] = [
    ("name", "Abcdefghijklmn", True, False),  # varchar(12) only
    ("name", None, True, True),  # NOT NULL / non-Nullable
    ("name", "abc123", True, True),  # pattern rule
    ("amount", D("1.234"), True, True),  # scale 2
    ("amount", D("1234567.5"), True, False),  # numeric(8,2) only (Decimal(10, 2) holds it)
    ("qty", -3, True, True),  # min rule (and the PostgreSQL CHECK)
    ("qty", 40000, True, True),  # smallint / Int16
    ("code", "abcd", True, True),  # varchar(3) / FixedString(3)
    ("state", "lost", True, True),  # CHECK / Enum8
]


def clean_row(rng: random.Random) -> dict[str, Any]:
    name = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 10))).capitalize()
    return {
        "name": name,
        "amount": D(rng.randint(0, 99_999_99)) / 100,
        "qty": rng.randint(0, 500),
        "code": rng.choice(["ab", "xyz", "q", None]),
        "state": rng.choice(CLEAN_STATES),
    }


class Model:
    """The state each destination must show: changes applied in order, bad ones skipped."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, dict[str, Any]]] = {"pg": {}, "ch": {}}
        self.bad: dict[str, set[tuple[int, str]]] = {"pg": set(), "ch": set()}  # (id, column)

    def apply(self, key: int, values: dict[str, Any], bad: tuple[str, bool, bool] | None) -> None:
        for dest, i in (("pg", 1), ("ch", 2)):
            if bad is not None and bad[i]:
                self.bad[dest].add((key, bad[0]))
                continue
            self.rows[dest].setdefault(key, {}).update(values)


def write(cql: Any, key: int, values: dict[str, Any], *, insert: bool) -> None:
    vals = {**values}
    if insert:
        vals["internal"] = f"secret {key}"
        cols = ["id", *vals]
        cql.execute(
            f"INSERT INTO dirty.orders ({', '.join(cols)}) VALUES ({', '.join('%s' for _ in cols)})",
            [key, *vals.values()],
        )
    else:
        sets = ", ".join(f"{c} = %s" for c in vals)
        cql.execute(f"UPDATE dirty.orders SET {sets} WHERE id = %s", [*vals.values(), key])


PG_SCHEMA: list[str] = []  # the test's schema name (set once)


def pg_rows(dsn: str) -> dict[int, dict[str, Any]]:
    async def read() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(
                await conn.fetch(f"SELECT id, name, amount, qty, code, state FROM {PG_SCHEMA[0]}.orders")
            )
        finally:
            await conn.close()

    import asyncio

    return {
        r["id"]: {k: r[k] for k in ("name", "amount", "qty", "code", "state")} for r in asyncio.run(read())
    }


def ch_rows(client: Any, db: str) -> dict[int, dict[str, Any]]:
    res = client.query(
        f"SELECT id, name, amount, qty, code, state FROM `{db}`.orders FINAL WHERE _cdc_is_deleted = 0"
    )
    out = {}
    for id_, name, amount, qty, raw_code, state in res.result_rows:
        code = raw_code.rstrip(b"\0").decode() if isinstance(raw_code, bytes) else raw_code
        out[int(id_)] = {"name": name, "amount": amount, "qty": qty, "code": code, "state": state}
    return out


def same(want: dict[str, Any], got: dict[str, Any]) -> bool:
    for col, v in want.items():
        g = got.get(col)
        if isinstance(v, D) or isinstance(g, D):
            if (v is None) != (g is None) or (v is not None and D(v) != D(g)):
                return False
        elif v != g:
            return False
    return True


def dlq(proc: CdcdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdcd", "dlq", *args, "--config", str(proc.config)],
        check=False, cwd=ROOT, env=proc.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def listing(proc: CdcdProcess, *args: str) -> list[dict[str, Any]]:
    out = dlq(proc, "list", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_dirty_workload_validation_queue_and_operator_commands(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, *, clickhouse_url: str, ch_database: str,
    redis_url: str, redis_prefix: str,
) -> None:  # fmt: skip
    for stmt in SCHEMA:
        cql.execute(stmt)
    import asyncio

    async def pg_exec(sql: str) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(pg_exec(PG_DDL.format(db=ch_database)))
    u = urlsplit(clickhouse_url)
    ch = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    ch.command(
        f"CREATE TABLE `{ch_database}`.orders (id UInt32, name LowCardinality(String), "
        "amount Nullable(Decimal(10, 2)), qty Nullable(Int16), code Nullable(FixedString(3)), "
        f"state Enum8('new' = 1, 'paid' = 2, 'sent' = 3), {CH_META}) "
        "ENGINE = ReplacingMergeTree(_cdc_version, _cdc_is_deleted) ORDER BY id"
    )
    destinations = (
        "create_tables = false\nadd_bookkeeping_columns = true\n\n"
        f'[destinations.ch]\ntype = "clickhouse"\nurl = "{clickhouse_url}"\n'
        "create_tables = false\nadd_bookkeeping_columns = true\n"
    )
    # target "<db>.orders": a PostgreSQL schema and a ClickHouse database of the same name
    proc = make_cdcd(
        [TableSpec("dirty.orders", f"{ch_database}.orders", destinations=("pg", "ch"), extra=TABLE_EXTRA)],
        ConfigOptions(extra={"destinations": destinations}),
    )
    try:
        _run(
            cql,
            proc,
            pg_dsn,
            ch=ch,
            ch_db=ch_database,
            redis_url=redis_url,
            prefix=redis_prefix,
            pg_exec=pg_exec,
        )
    finally:
        ch.close()


def _run(
    cql: Any,
    proc: CdcdProcess,
    pg_dsn: str,
    *,
    ch: Any,
    ch_db: str,
    redis_url: str,
    prefix: str,
    pg_exec: Any,
) -> None:
    import asyncio

    PG_SCHEMA[:] = [ch_db]
    proc.start()
    proc.wait_ready(90)
    rng = random.Random(9)
    model = Model()
    clean_keys: list[int] = []
    n = 400
    for key in range(1, n + 1):
        values = clean_row(rng)
        bad = None
        if rng.random() < 0.05:
            col, value, pg_bad, ch_bad = rng.choice(DIRTY)
            values[col] = value
            bad = (col, pg_bad, ch_bad)
        elif values["name"] is not None:
            clean_keys.append(key)
        write(cql, key, values, insert=True)
        model.apply(key, values, bad)
    for _ in range(100):  # partial updates of clean rows, ~5% dirty
        key = rng.choice(clean_keys)
        col = rng.choice(["qty", "amount", "name", "state"])
        value = clean_row(rng)[col]
        bad = None
        if rng.random() < 0.05:
            dirty = [d for d in DIRTY if d[0] == col]
            _, value, pg_bad, ch_bad = rng.choice(dirty)
            bad = (col, pg_bad, ch_bad)
        write(cql, key, {col: value}, insert=False)
        model.apply(key, {col: value}, bad)
    # A key whose bad change is followed by a good one (the stale correction below).
    stale_key = 9000
    write(cql, stale_key, {"name": "Stale", "qty": 1, "state": "new"}, insert=True)
    model.apply(stale_key, {"name": "Stale", "qty": 1, "state": "new"}, None)
    write(cql, stale_key, {"qty": -5}, insert=False)
    model.apply(stale_key, {"qty": -5}, ("qty", True, True))
    write(cql, stale_key, {"qty": 9}, insert=False)
    model.apply(stale_key, {"qty": 9}, None)
    # Names only PostgreSQL refuses (varchar(12)): resubmitted after the column is widened.
    long_keys = list(range(5001, 5041))
    for key in long_keys:
        values = {"name": "Longname" + "x" * (5 + key % 8), "qty": key % 100, "state": "new"}
        write(cql, key, values, insert=True)
        model.apply(key, values, ("name", True, False))

    def converged() -> bool:
        pg, chr_ = pg_rows(pg_dsn), ch_rows(ch, ch_db)
        return (
            len(pg) == len(model.rows["pg"])
            and len(chr_) == len(model.rows["ch"])
            and all(same(model.rows["pg"][k], pg.get(k, {})) for k in model.rows["pg"])
            and all(same(model.rows["ch"][k], chr_.get(k, {})) for k in model.rows["ch"])
        )

    wait_for(converged, 120, "every good row in PostgreSQL and ClickHouse", interval=1.0)
    dirty_share = sum(len(b) for b in model.bad.values()) / 2 / (n + 100)
    assert 0.02 < dirty_share < 0.10, dirty_share  # about 5% of the main workload

    # Every bad change is queued for its destination with columns, rule and reason; none applied.
    for dest in ("pg", "ch"):
        entries = listing(proc, "--queue", "validation", "--destination", dest)
        got = {(e["key"]["id"], e["columns"][0]) for e in entries}
        assert got == model.bad[dest], (dest, got ^ model.bad[dest])
        for e in entries:
            assert e["reason"] and e["rule"] and e["table"] == "dirty.orders" and e["first_seen"]
            assert "internal" not in e["values"] or e["values"]["internal"].startswith("secret")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/metrics", timeout=10).read().decode()
    assert 'cdcd_rejected_events_total{destination="pg",queue="validation",reason="max_length"' in metrics
    assert 'cdcd_rejected_share_alert{destination="pg"' in metrics
    pg_now = pg_rows(pg_dsn)
    assert all(len(r["name"]) <= 12 for r in pg_now.values())
    assert {r["state"] for r in pg_now.values()} <= set(CLEAN_STATES)

    # A good row right behind a bad one arrives within the normal batch wait.
    write(cql, 7001, {"name": "Bad", "qty": -1, "state": "new"}, insert=True)
    started = time.monotonic()
    write(cql, 7002, {"name": "Good", "qty": 2, "state": "paid"}, insert=True)
    wait_for(
        lambda: 7002 in pg_rows(pg_dsn) and 7002 in ch_rows(ch, ch_db), 30, "good row 7002", interval=0.1
    )
    assert time.monotonic() - started < 5.0
    assert 7001 not in pg_rows(pg_dsn)

    # list / edit / retry round trip: a refused name corrected and resubmitted, per destination.
    for dest in ("pg", "ch"):
        entries = listing(proc, "--queue", "validation", "--destination", dest)
        target = next(e for e in entries if e["rule"] == "pattern")
        out = dlq(proc, "edit", target["id"], "--set", "name=Fixed name")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"applied: {target['id']}" in out.stdout
        rows = pg_rows(pg_dsn) if dest == "pg" else ch_rows(ch, ch_db)
        assert rows[target["key"]["id"]]["name"] == "Fixed name"
        assert dlq(proc, "show", target["id"]).returncode == 1  # it left the queue

    # A stale correction: the bad qty=-5 is older than the applied qty=9; corrected, it is skipped.
    entry = next(
        e
        for e in listing(proc, "--queue", "validation", "--destination", "pg")
        if e["key"]["id"] == stale_key
    )
    out = dlq(proc, "edit", entry["id"], "--set", "qty=3")
    assert out.returncode == 0 and "stale" in out.stdout, out.stdout + out.stderr
    assert pg_rows(pg_dsn)[stale_key]["qty"] == 9
    stale = listing(proc, "--queue", "stale", "--destination", "pg")
    assert [e["key"]["id"] for e in stale] == [stale_key]
    # both write times: the resubmitted change's and the destination row's (cdcd.flow.writer.stale_reason)
    assert re.match(
        r"stale: event written at \S+ \(\d+ us\); destination row written at \S+ \(\d+ us\)",
        stale[0]["reason"],
    ), stale[0]["reason"]

    # Widen the column, then retry every PostgreSQL entry, killed (-9) while one is in flight.
    asyncio.run(pg_exec(f"ALTER TABLE {ch_db}.orders ALTER COLUMN name TYPE varchar(40)"))
    r = redis.Redis.from_url(redis_url)
    marks = f"{prefix}:dlq:retrying:pg"
    retry = subprocess.Popen(
        [sys.executable, "-m", "cdcd", "dlq", "retry", "--all", "--destination", "pg", "--queue", "validation",
         "--config", str(proc.config)],
        cwd=ROOT, env=proc.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed = False
    while retry.poll() is None:
        if r.hlen(marks) > 0:
            os.kill(retry.pid, signal.SIGSTOP)
            if r.hlen(marks) > 0:
                os.kill(retry.pid, signal.SIGKILL)
                killed = True
                break
            os.kill(retry.pid, signal.SIGCONT)
    retry.wait(60)
    assert killed, "the retry finished before it could be killed in flight"
    in_flight = [k.decode() for k in r.hkeys(marks)]
    assert len(in_flight) == 1
    out = dlq(proc, "retry", "--all", "--destination", "pg", "--queue", "validation")
    assert "applied:" in out.stdout or "refused again" in out.stdout, out.stdout + out.stderr
    assert r.hlen(marks) == 0
    pg_now = pg_rows(pg_dsn)
    for key in long_keys:
        assert same(model.rows["ch"][key], pg_now[key]), key  # applied, exactly as ClickHouse has it
    left = listing(proc, "--queue", "validation", "--destination", "pg")
    assert not [e for e in left if e["key"]["id"] in long_keys]
    assert all(e["rule"] != "max_length" or e["key"]["id"] not in long_keys for e in left)
    assert [e["key"]["id"] for e in listing(proc, "--queue", "stale", "--destination", "pg")] == [stale_key]
    # What is still refused stays queued, with its attempts counted.
    assert all(e["attempts"] >= 1 for e in left)

    # An undecodable CDC log group lands in the dead-letter queue of both destinations.
    stream = cql.execute('SELECT "cdc$stream_id" FROM dirty.orders_scylla_cdc_log LIMIT 1').one()[0]
    cql.execute(
        'INSERT INTO dirty.orders_scylla_cdc_log ("cdc$stream_id", "cdc$time", "cdc$batch_seq_no", '
        '"cdc$operation", "cdc$end_of_batch", id, name) VALUES (%s, %s, 0, 42, true, 5555, %s)',
        [stream, uuid.uuid1(), "corrupt"],
    )

    def dead() -> list[dict[str, Any]]:
        return [e for e in listing(proc, "--queue", "dead") if e["rule"] == "undecodable"]

    wait_for(lambda: len(dead()) == 2, 30, "the undecodable group in both dead-letter queues", interval=0.5)
    for e in dead():
        assert e["values"]["raw_rows"][0]["id"] == 5555 and e["reason"]
    assert "skipped" in dlq(proc, "retry", dead()[0]["id"]).stdout
    assert 5555 not in pg_rows(pg_dsn)
    assert proc.stop() == 0

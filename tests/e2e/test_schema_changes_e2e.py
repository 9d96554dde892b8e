"""Schema changes of a source table while ``cdcd run`` replicates it (issue 12; R-30, R-31, R-32).

A small random workload (``Writer``: inserts, partial updates, deletes through prepared
statements) keeps writing while columns are added and dropped; cdcd is ``kill -9``-ed and
restarted in between. Afterwards every destination equals the source on the source's current
columns (the compare of tests/e2e/compare*.py reads the source's schema), new columns' values
included, and nothing went to the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import clickhouse_connect
import msgspec
import pytest
import redis

from tests.e2e.compare import pg_connect, pg_snapshot, source_schema, source_snapshot, wait_converged
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ROOT, CdcdProcess, ConfigOptions, TableSpec, ch_ts_destinations, wait_for


class Writer:
    """Random changes to ``ks.t (pk int, ck int, <columns>)`` from a thread; ``columns`` may be
    changed between batches (the statements are prepared again for the new column set)."""

    def __init__(self, cql: Any, table: str, columns: dict[str, str], seed: int = 1) -> None:
        self.cql = cql
        self.table = table
        self.columns = dict(columns)  # name -> "int" | "text"
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.written = 0
        self.thread: threading.Thread | None = None

    def create(self) -> None:
        cols = "".join(f", {n} {t}" for n, t in self.columns.items())
        self.cql.execute(
            f"CREATE TABLE {self.table} (pk int, ck int{cols}, PRIMARY KEY (pk, ck)) WITH cdc = {{'enabled': true}}"
        )

    def value(self, kind: str) -> Any:
        r = self.rng
        if r.random() < 0.1:
            return None
        return (
            r.randint(-1000, 1000)
            if kind == "int"
            else r.choice(["a", "bb", "ccc", "日本", ""]) + str(r.randint(0, 99))
        )

    def step(self) -> None:
        with self.lock:  # a DDL waits for the statement in flight (written for the old columns)
            self._step()

    def _step(self) -> None:
        cols = dict(self.columns)
        r = self.rng
        pk, ck = r.randint(0, 15), r.randint(0, 15)
        op = r.random()
        if op < 0.5:
            names = list(cols)
            self.cql.execute(
                f"INSERT INTO {self.table} (pk, ck{''.join(', ' + n for n in names)}) VALUES (%s, %s{', %s' * len(names)})",
                [pk, ck, *(self.value(cols[n]) for n in names)],
            )
        elif op < 0.9:
            # ``a`` (never dropped) always gets a value: a row kept alive only by cells of a
            # column that is dropped later vanishes from Scylla without a CDC event (README)
            names = r.sample([n for n in cols if n != "a"], k=min(len(cols) - 1, r.randint(0, 2)))
            sets = ", ".join(f"{n} = %s" for n in ["a", *names])
            self.cql.execute(
                f"UPDATE {self.table} SET {sets} WHERE pk = %s AND ck = %s",
                [f"u{self.written}", *(self.value(cols[n]) for n in names), pk, ck],
            )
        else:
            self.cql.execute(f"DELETE FROM {self.table} WHERE pk = %s AND ck = %s", [pk, ck])
        self.written += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
            time.sleep(0.002)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(30)

    def alter(self, ddl: str, columns: dict[str, str]) -> None:
        """Run ``ddl`` on the table and write ``columns`` from now on."""
        with self.lock:
            self.cql.execute(f"ALTER TABLE {self.table} {ddl}")
            self.columns = dict(columns)


async def add_w_while_running(cdcd: CdcdProcess, w: Writer) -> None:
    """Start cdcd and the writer (columns ``a text, b int``); a second later ``ADD w int``."""
    cdcd.start()
    cdcd.wait_ready()
    w.start()
    await asyncio.sleep(1.0)
    w.alter("ADD w int", {"a": "text", "b": "int", "w": "int"})


def alive(cdcd: CdcdProcess) -> Any:
    def check() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    return check


def schema_logs(cdcd: CdcdProcess) -> list[dict[str, Any]]:
    return [m for m in cdcd.log_messages() if m.get("message") == "schema change"]


def queued(redis_url: str, prefix: str, kind: str = "dead") -> int:
    """Entries in the dead-letter store's ``kind`` queue, every destination."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.hlen(k)) for k in client.scan_iter(f"{prefix}:dlq:{kind}:*:e"))
    finally:
        client.close()


def forget_state(redis_url: str, prefix: str) -> None:
    """What FLUSHALL does to this test's cdcd (only its keys: the Redis is shared)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def without(schema: Any, *names: str) -> Any:
    return msgspec.structs.replace(schema, columns=tuple(c for c in schema.columns if c.name not in names))


async def pg_columns(dsn: str, table: str) -> list[str]:
    conn = await pg_connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = $1 ORDER BY ordinal_position",
            table,
        )
    finally:
        await conn.close()
    return [r["column_name"] for r in rows]


def ks(cql: Any) -> None:
    cql.execute("CREATE KEYSPACE sc WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")


FAST = 'schema_check_interval = "2s"'


def cli(cdcd: CdcdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m cdcd <args> --config <cdcd's config>``."""
    return subprocess.run(
        [sys.executable, "-m", "cdcd", *args, "--config", str(cdcd.config)],
        cwd=ROOT, env=cdcd.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def metrics_text(cdcd: CdcdProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{cdcd.http_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def admin_post(cdcd: CdcdProcess, path: str, token: str) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{cdcd.http_port}/admin/{path}", method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def test_propagate_add_and_drop_columns_into_postgres_across_a_generation_switch(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    cql.execute("CREATE KEYSPACE sc WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
    w = Writer(cql, "sc.t", {"a": "text", "b": "int"})
    w.create()
    cdcd = make_cdcd(
        [TableSpec("sc.t", "public.t")], ConfigOptions(extra={"source": 'schema_check_interval = "2s"'})
    )
    await add_w_while_running(cdcd, w)
    await asyncio.sleep(1.0)
    # A CDC generation switch 1 s from now (new streams): the new column flows across it.
    cql.execute("INSERT INTO emulator.control (command, value) VALUES ('new_generation', '1000')")
    await asyncio.sleep(2.0)
    w.alter("DROP b", {"a": "text", "w": "int"})
    await asyncio.sleep(1.0)
    w.join()
    schema = source_schema(cql, "sc.t")
    await wait_converged(cql, schema, pg_dsn, "public.t", timeout=60, alive=alive(cdcd))
    assert any(m.get("message") == "generation switch" for m in cdcd.log_messages())
    logs = schema_logs(cdcd)
    assert any("column added w (- -> int)" in m.get("changes", []) for m in logs), logs
    status = cdcd.status()
    assert status["schemas"]["sc.t"]["version"] == 3 and status["tables"]["sc.t"]["schema_version"] == 3
    text = await asyncio.to_thread(metrics_text, cdcd)
    assert 'cdcd_schema_changes_total{kind="column_added",table="sc.t"} 1.0' in text
    assert 'cdcd_schema_changes_total{kind="column_dropped",table="sc.t"} 1.0' in text
    # Redis: the shared cache (with the check interval as TTL), the recorded version, the history.
    client = redis.Redis.from_url(redis_url)
    try:
        cache = f"{redis_prefix}:schema:cache:sc.t"
        wait_for(lambda: 0 < client.ttl(cache) <= 2, 10, "the schema cache with a 2 s TTL")
        assert json.loads(client.get(cache) or b"{}").get("version") in (3, None)
        assert json.loads(client.get(f"{redis_prefix}:schema:current:sc.t"))["version"] == 3
        assert client.llen(f"{redis_prefix}:schema:history:sc.t") == 3
    finally:
        client.close()
    assert queued(redis_url, redis_prefix) == 0
    assert cdcd.stop() == 0


@pytest.mark.slow  # ~1 min
async def test_add_and_drop_under_kill9_into_three_destinations(  # noqa: PLR0917
    cql: Any,
    make_cdcd: MakeCdcd,
    pg_dsn: str,
    ts_dsn: str,
    clickhouse_url: str,
    ch_database: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """PostgreSQL, TimescaleDB and ClickHouse follow ADD/ADD/DROP made while writing, with a
    kill -9 right after each DDL (before cdcd saw a new event) and in between."""
    ks(cql)
    w = Writer(cql, "sc.t", {"a": "text", "b": "int"}, seed=3)
    w.create()
    target = f"{ch_database}.t"
    destinations = ch_ts_destinations(clickhouse_url)
    cdcd = make_cdcd(
        [TableSpec("sc.t", target, destinations=("pg", "ch", "ts"))],
        ConfigOptions(batch_max_rows=50, extra={"destinations": destinations, "source": FAST}),
        env={"TS_DSN": ts_dsn},
    )
    cdcd.start()
    cdcd.wait_ready()
    w.start()
    rng = random.Random(5)
    steps = [
        ("ADD w int", {"a": "text", "b": "int", "w": "int"}),
        ("ADD z text", {"a": "text", "b": "int", "w": "int", "z": "text"}),
        ("DROP b", {"a": "text", "w": "int", "z": "text"}),
    ]
    for ddl, cols in steps:
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        cdcd.kill9()
        w.alter(ddl, cols)  # the DDL while cdcd is down, then new events
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        cdcd.start()
        await asyncio.to_thread(cdcd.wait_ready, 60)
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        cdcd.kill9()  # and once while it replicates the new schema
        cdcd.start()
        await asyncio.to_thread(cdcd.wait_ready, 60)
    await asyncio.sleep(1.0)
    w.join()
    assert w.written > 300

    schema = source_schema(cql, "sc.t")
    assert [c.name for c in schema.columns] == ["pk", "ck", "a", "w", "z"]
    pg = await wait_converged(cql, schema, pg_dsn, target, timeout=90, alive=alive(cdcd))
    await wait_converged(cql, schema, ts_dsn, target, timeout=90, alive=alive(cdcd))
    u = urlsplit(clickhouse_url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    try:
        await wait_ch_converged(cql, schema, client, target, timeout=90, alive=alive(cdcd))
        ch_cols = [
            r[0]
            for r in client.query(
                f"SELECT name FROM system.columns WHERE database = '{ch_database}' AND table = 't'"
            ).result_rows
        ]
    finally:
        client.close()
    assert any(v["w"] is not None for v in pg.rows.values()) and any(v["z"] for v in pg.rows.values())
    assert {"a", "b", "w", "z"} <= set(ch_cols), ch_cols  # b (dropped) stays
    assert queued(redis_url, redis_prefix) == 0
    assert queued(redis_url, redis_prefix, "validation") == 0
    status = cdcd.status()
    assert status["schemas"]["sc.t"]["version"] == 4, status["schemas"]
    assert cdcd.stop() == 0, cdcd.log_tail()


async def test_log_mode_writes_the_rest_without_the_new_column(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    ks(cql)
    w = Writer(cql, "sc.l", {"a": "text", "b": "int"}, seed=4)
    w.create()
    cdcd = make_cdcd(
        [TableSpec("sc.l", "public.l", schema_changes="log")], ConfigOptions(extra={"source": FAST})
    )
    await add_w_while_running(cdcd, w)
    await asyncio.sleep(1.5)
    cdcd.kill9()
    cdcd.start()
    await asyncio.to_thread(cdcd.wait_ready, 60)
    await asyncio.sleep(1.0)
    w.join()
    schema = source_schema(cql, "sc.l")
    await wait_converged(cql, without(schema, "w"), pg_dsn, "public.l", timeout=60, alive=alive(cdcd))
    assert "w" not in await pg_columns(pg_dsn, "l")
    logs = schema_logs(cdcd)
    assert len([m for m in logs if m["version"] == 2]) == 1, logs  # logged once, not again after the restart
    assert logs[0]["policy"] == "log" and logs[0]["columns_after"][-1] == "w int"
    assert queued(redis_url, redis_prefix) == 0 and queued(redis_url, redis_prefix, "validation") == 0
    assert cdcd.stop() == 0


async def test_a_table_the_user_created_gets_no_new_column_even_with_create_tables_on(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """The destination table existed before cdcd first ran (create_tables is on, so cdcd added
    only its bookkeeping columns): a column added to the source is not added to it; its events are
    written without that column, said once, nothing queued (that a table cdcd created gets it is
    the propagate tests above)."""
    ks(cql)
    w = Writer(cql, "sc.u", {"a": "text", "b": "int"}, seed=7)
    w.create()
    conn = await pg_connect(pg_dsn)
    try:
        await conn.execute("CREATE TABLE public.u (pk int, ck int, a text, b int, PRIMARY KEY (pk, ck))")
    finally:
        await conn.close()
    cdcd = make_cdcd([TableSpec("sc.u", "public.u")], ConfigOptions(extra={"source": FAST}))
    await add_w_while_running(cdcd, w)
    await asyncio.sleep(2.0)
    w.join()
    schema = source_schema(cql, "sc.u")
    await wait_converged(cql, without(schema, "w"), pg_dsn, "public.u", timeout=60, alive=alive(cdcd))
    assert "w" not in await pg_columns(pg_dsn, "u")
    said = [m for m in cdcd.log_messages() if "was not created by cdcd" in m.get("message", "")]
    assert len(said) == 1 and said[0]["columns"] == ["w"], said
    assert queued(redis_url, redis_prefix) == 0 and queued(redis_url, redis_prefix, "validation") == 0
    assert cdcd.stop() == 0


async def test_halt_stops_only_that_table_and_resumes_without_loss(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    ks(cql)
    h = Writer(cql, "sc.h", {"a": "text", "b": "int"}, seed=5)
    o = Writer(cql, "sc.o", {"a": "text", "b": "int"}, seed=6)
    h.create()
    o.create()
    token = "s3cret-admin-token"
    cdcd = make_cdcd(
        [
            TableSpec("sc.h", "public.h", schema_changes="halt"),
            TableSpec("sc.o", "public.o", schema_changes="halt"),
        ],
        ConfigOptions(extra={"source": FAST, "http": 'admin_token = "${ADMIN_TOKEN}"'}),
        env={"ADMIN_TOKEN": token},
    )
    cdcd.start()
    cdcd.wait_ready()
    h.start()
    o.start()
    await asyncio.sleep(1.0)
    h.alter("ADD w int", {"a": "text", "b": "int", "w": "int"})

    def halted() -> bool:
        code, body = cdcd.get("/readyz")
        return code == 503 and "halted: sc.h" in body["checks"]["schema"]["detail"]

    await asyncio.to_thread(wait_for, halted, 30, "/readyz names the halted table")
    await asyncio.sleep(2.0)
    states = {g["state"] for g in cdcd.status()["tables"]["sc.h"]["destinations"]["pg"]["groups"].values()}
    assert "halted" in states, states
    # The other table keeps flowing while sc.h is halted.
    o.join()
    await wait_converged(cql, source_schema(cql, "sc.o"), pg_dsn, "public.o", timeout=60, alive=alive(cdcd))
    # Nothing of the new schema reached PostgreSQL.
    assert "w" not in await pg_columns(pg_dsn, "h")
    # A kill -9 while halted: still halted after the restart.
    cdcd.kill9()
    cdcd.start()
    await asyncio.to_thread(wait_for, halted, 60, "/readyz names the halted table after a restart")
    assert any(
        m.get("message", "").startswith("table halted") and m.get("level") == "error"
        for m in cdcd.log_messages()
    )
    hist = await asyncio.to_thread(cli, cdcd, "schema", "history", "--table", "sc.h")
    assert hist.returncode == 0 and "version 2" in hist.stdout and "column added w" in hist.stdout, hist
    # Redis loses its state while halted (as by FLUSHALL): the running process halts it again...
    forget_state(redis_url, redis_prefix)
    await asyncio.sleep(6.0)  # the gates look at the halt every 2 s; the leases come back after a TTL
    assert halted() and "w" not in await pg_columns(pg_dsn, "h")
    # ... and so does a restart that finds no halt and no schema history in Redis: PostgreSQL
    # lacks the new column, so the table halts again instead of being altered.
    cdcd.kill9()
    forget_state(redis_url, redis_prefix)
    cdcd.start()
    await asyncio.to_thread(wait_for, halted, 60, "/readyz names the halted table after Redis lost it")
    await asyncio.sleep(2.0)
    assert "w" not in await pg_columns(pg_dsn, "h")
    h.join()
    # `cdcd resume --table` (the CLI) lifts it; the admin endpoint answers for a table not halted.
    out = await asyncio.to_thread(cli, cdcd, "resume", "--table", "sc.h")
    assert out.returncode == 0 and "sc.h resumed" in out.stdout, out
    deadline = time.monotonic() + 30
    while "w" not in await pg_columns(pg_dsn, "h"):  # the gate notices the resume, alters the table
        assert time.monotonic() < deadline, cdcd.log_tail()
        await asyncio.sleep(0.2)
    await wait_converged(cql, source_schema(cql, "sc.h"), pg_dsn, "public.h", timeout=60, alive=alive(cdcd))
    await asyncio.to_thread(cdcd.wait_ready, 30)
    body = await asyncio.to_thread(admin_post, cdcd, "resume/sc.h", token)
    assert body["result"]["was_halted"] is False
    assert queued(redis_url, redis_prefix) == 0
    assert cdcd.stop() == 0


async def test_halt_resumed_through_the_admin_endpoint(cql: Any, make_cdcd: MakeCdcd, pg_dsn: str) -> None:
    ks(cql)
    h = Writer(cql, "sc.a", {"a": "text", "b": "int"}, seed=8)
    h.create()
    token = "another-admin-token"
    cdcd = make_cdcd(
        [TableSpec("sc.a", "public.a", schema_changes="halt")],
        ConfigOptions(extra={"source": FAST, "http": 'admin_token = "${ADMIN_TOKEN}"'}),
        env={"ADMIN_TOKEN": token},
    )
    cdcd.start()
    cdcd.wait_ready()
    h.start()
    await asyncio.sleep(0.5)
    h.alter("DROP b", {"a": "text"})
    await asyncio.to_thread(wait_for, lambda: cdcd.get("/readyz")[0] == 503, 30, "halted")
    await asyncio.sleep(1.0)
    h.join()
    body = await asyncio.to_thread(admin_post, cdcd, "resume/sc.a", token)
    assert body["result"]["was_halted"] is True
    await wait_converged(cql, source_schema(cql, "sc.a"), pg_dsn, "public.a", timeout=60, alive=alive(cdcd))
    await asyncio.to_thread(cdcd.wait_ready, 30)
    assert cdcd.stop() == 0


@pytest.mark.parametrize("policy", ["propagate", "log"])
async def test_incompatible_readd_goes_to_validation_and_the_rest_flows(  # noqa: PLR0917
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str, policy: str
) -> None:
    ks(cql)
    w = Writer(cql, "sc.i", {"a": "text", "b": "int"}, seed=9)
    w.create()
    cdcd = make_cdcd(
        [TableSpec("sc.i", "public.i", schema_changes=policy)], ConfigOptions(extra={"source": FAST})
    )
    cdcd.start()
    cdcd.wait_ready()
    w.start()
    await asyncio.sleep(1.0)
    w.alter("DROP b", {"a": "text"})
    await asyncio.sleep(1.0)
    w.alter("ADD b text", {"a": "text", "b": "text"})
    await asyncio.sleep(1.5)
    w.join()
    schema = source_schema(cql, "sc.i")
    await wait_converged(cql, without(schema, "b"), pg_dsn, "public.i", timeout=60, alive=alive(cdcd))
    wait_for(lambda: queued(redis_url, redis_prefix, "validation") > 0, 30, "validation entries")
    assert queued(redis_url, redis_prefix) == 0
    errors = [m for m in cdcd.log_messages() if m.get("message") == "schema change" and m["level"] == "error"]
    assert any("column incompatible b (int -> text)" in m["changes"] for m in errors), errors
    assert cdcd.stop() == 0


async def test_dropped_and_recreated_table_is_followed(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    ks(cql)
    w = Writer(cql, "sc.r", {"a": "text", "b": "int"}, seed=10)
    w.create()
    cdcd = make_cdcd([TableSpec("sc.r", "public.r")], ConfigOptions(extra={"source": FAST}))
    cdcd.start()
    cdcd.wait_ready()
    for _ in range(100):
        w.step()
    await wait_converged(cql, source_schema(cql, "sc.r"), pg_dsn, "public.r", timeout=60, alive=alive(cdcd))
    cql.execute("DROP TABLE sc.r")
    await asyncio.sleep(1.0)
    w2 = Writer(cql, "sc.r", {"a": "text", "w": "int"}, seed=11)
    w2.create()
    for _ in range(150):
        w2.step()
    # The new table's rows arrive (the old rows stay in PostgreSQL: no delete was logged).
    schema = source_schema(cql, "sc.r")
    expected = await asyncio.to_thread(source_snapshot, cql, schema)

    async def arrived() -> bool:
        conn = await pg_connect(pg_dsn)
        try:
            actual = await pg_snapshot(conn, schema, "public.r")
        except asyncpg.UndefinedColumnError:  # not altered yet
            return False
        finally:
            await conn.close()
        return all(actual.rows.get(k) == v for k, v in expected.rows.items())

    deadline = time.monotonic() + 90
    while not await arrived():
        alive(cdcd)()
        assert time.monotonic() < deadline, cdcd.log_tail()
        await asyncio.sleep(0.5)
    kinds = [c for m in schema_logs(cdcd) for c in m["changes"]]
    assert any(k.startswith("table dropped") for k in kinds) and any(
        k.startswith("table recreated") for k in kinds
    ), kinds
    assert queued(redis_url, redis_prefix) == 0
    assert cdcd.stop() == 0


async def test_udt_field_added_is_logged_and_replication_goes_on(  # noqa: PLR0917
    cql: Any,
    make_cdcd: MakeCdcd,
    pg_dsn: str,
    clickhouse_url: str,
    ch_database: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """``ALTER TYPE ... ADD``: logged as udt_changed; the destination column keeps the type's
    previous fields (README), every other value keeps flowing, nothing is dead-lettered."""
    ks(cql)
    cql.execute("CREATE TYPE sc.ut (x int, y text)")
    cql.execute(
        "CREATE TABLE sc.u (pk int, ck int, a text, u frozen<ut>, PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true}"
    )
    destinations = f'[destinations.ch]\ntype = "clickhouse"\nurl = "{clickhouse_url}"\n'
    target = f"{ch_database}.u"
    cdcd = make_cdcd(
        [TableSpec("sc.u", target, destinations=("pg", "ch"))],
        ConfigOptions(extra={"source": FAST, "destinations": destinations}),
    )
    cdcd.start()
    cdcd.wait_ready()
    for i in range(20):
        cql.execute(
            "INSERT INTO sc.u (pk, ck, a, u) VALUES (%s, %s, %s, {x: %s, y: %s})",
            [i % 4, i, f"a{i}", i, f"y{i}"],
        )
    cql.execute("ALTER TYPE sc.ut ADD z int")
    for i in range(20, 40):
        cql.execute(
            "INSERT INTO sc.u (pk, ck, a, u) VALUES (%s, %s, %s, {x: %s, y: %s, z: %s})",
            [i % 4, i, f"a{i}", i, f"y{i}", i],
        )
    schema = without(source_schema(cql, "sc.u"), "u")
    await wait_converged(cql, schema, pg_dsn, target, timeout=60, alive=alive(cdcd))
    u = urlsplit(clickhouse_url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    try:
        await wait_ch_converged(cql, schema, client, target, timeout=60, alive=alive(cdcd))
    finally:
        client.close()

    def logged() -> bool:
        return any(c.startswith("udt changed u") for m in schema_logs(cdcd) for c in m["changes"])

    await asyncio.to_thread(wait_for, logged, 30, "udt_changed logged")
    assert queued(redis_url, redis_prefix) == 0
    assert cdcd.stop() == 0


async def test_new_column_matching_a_masking_rule_is_masked_from_its_first_event(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """R-21 with R-30: ``ADD ssn text`` under a ``[[masking.rules]]`` pattern: the destination
    gets ``ssn`` as a text column holding only the redacted value, from the first event on."""
    ks(cql)
    w = Writer(cql, "sc.m", {"a": "text", "b": "int"}, seed=12)
    w.create()
    masking = '[masking]\n\n[[masking.rules]]\npattern = "^ssn$"\nstrategy = "redact"\n'
    cdcd = make_cdcd(
        [TableSpec("sc.m", "public.m")], ConfigOptions(extra={"source": FAST, "destinations": masking})
    )
    cdcd.start()
    cdcd.wait_ready()
    for _ in range(50):
        w.step()
    w.alter("ADD ssn text", {"a": "text", "b": "int", "ssn": "text"})
    for i in range(100):
        cql.execute(
            "UPDATE sc.m SET a = %s, ssn = %s WHERE pk = %s AND ck = %s",
            [f"m{i}", f"123-45-{i:04d}", i % 8, i % 5],
        )
    schema = source_schema(cql, "sc.m")
    await wait_converged(cql, without(schema, "ssn"), pg_dsn, "public.m", timeout=60, alive=alive(cdcd))
    conn = await pg_connect(pg_dsn)
    try:
        deadline = time.monotonic() + 30
        while True:
            values = {
                r["ssn"]
                for r in await conn.fetch(
                    "SELECT ssn FROM public.m WHERE NOT _cdc_deleted AND ssn IS NOT NULL"
                )
            }
            if values or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
    finally:
        await conn.close()
    assert values == {"[REDACTED]"}, values
    assert queued(redis_url, redis_prefix) == 0
    assert cdcd.stop() == 0

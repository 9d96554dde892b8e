"""``cdcd snapshot`` / ``cdcd reconcile`` in process against the emulator, PostgreSQL,
TimescaleDB, ClickHouse and Redis (issue 14):

* a snapshot copies rows with their cells' write times (the destination's version) and a finished
  snapshot is not redone;
* destinations tampered with (a row deleted, a value changed, a row soft-deleted, an extra row)
  are reported exactly, with keys and the differing columns; ``--repair`` fixes them and a second
  reconcile reports nothing;
* reconcile against a destination still catching up (cdcd restarted after a burst of changes)
  reports no false differences.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import clickhouse_connect
import pytest

from cdcd.config import Config, load
from cdcd.snapshot.commands import snapshot_command
from cdcd.snapshot.reconcile import reconcile_command
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import PG_ENV, ConfigOptions, TableSpec, ch_ts_destinations, free_port, write_config

MakeConfig = Callable[..., Config]
KS = "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"


@pytest.fixture
def make_config(  # noqa: PLR0917
    emulator: Any,
    pg_dsn: str,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MakeConfig]:
    """``make_config(tables, destinations="", env={})`` -> a loaded ``Config`` (pg is the
    ``pg_dsn`` database; more destinations as raw TOML)."""

    def make(tables: list[TableSpec], destinations: str = "", env: dict[str, str] | None = None) -> Config:
        monkeypatch.setenv(PG_ENV, pg_dsn)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        path = write_config(
            tmp_path / "cdcd.toml", hosts=[f"{emulator.host}:{emulator.port}"], redis_url=redis_url,
            key_prefix=redis_prefix, tables=tables, http_port=free_port(),
            options=ConfigOptions(extra={"destinations": destinations}),
        )  # fmt: skip
        return load(path)

    yield make


async def test_snapshot_copies_rows_with_write_times(cql: Any, pg_dsn: str, make_config: MakeConfig) -> None:
    cql.execute(KS)
    cql.execute("CREATE TABLE ks.t (p int, c int, a text, b int, s set<int>, PRIMARY KEY (p, c))")
    for p in range(20):
        for c in range(3):
            cql.execute(
                "INSERT INTO ks.t (p, c, a, b, s) VALUES (%s, %s, %s, %s, {1, 2}) USING TIMESTAMP 1000",
                (p, c, f"v{p}", c),
            )
    cql.execute("UPDATE ks.t USING TIMESTAMP 2000 SET b = 99 WHERE p = 1 AND c = 1")
    cql.execute("ALTER TABLE ks.t WITH cdc = {'enabled': true}")  # the log holds none of these rows
    cfg = make_config([TableSpec("ks.t", "public.t")])
    assert await snapshot_command(cfg, table="ks.t", ranges=8, quiet=True) == 0
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT p, c, a, b, s, _cdc_write_time FROM public.t ORDER BY p, c")
        assert len(rows) == 60
        r = next(r for r in rows if r["p"] == 1 and r["c"] == 1)
        # cells of two write times: the newest one is the row's version
        assert (r["a"], r["b"], list(r["s"]), r["_cdc_write_time"]) == ("v1", 99, [1, 2], 2000)
        await conn.execute("DELETE FROM public.t WHERE p = 2")
        # finished: a second run reads nothing (the deleted rows stay deleted)
        assert await snapshot_command(cfg, table="ks.t", ranges=8, quiet=True) == 0
        assert await conn.fetchval("SELECT count(*) FROM public.t") == 57
    finally:
        await conn.close()


def _ch(url: str) -> Any:
    u = urlsplit(url)
    return clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)


async def test_reconcile_reports_tampering_exactly_and_repairs_it(  # noqa: PLR0917
    cql: Any, pg_dsn: str, ts_dsn: str, clickhouse_url: str, ch_database: str, make_config: MakeConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cql.execute(KS)
    cql.execute("CREATE TABLE ks.t (p int, c int, a text, b int, m map<text, int>, PRIMARY KEY (p, c))")
    for p in range(40):
        cql.execute("INSERT INTO ks.t (p, c, a, b, m) VALUES (%s, 0, %s, %s, {'k': %s})", (p, f"v{p}", p, p))
    cql.execute("ALTER TABLE ks.t WITH cdc = {'enabled': true}")
    dests = ch_ts_destinations(clickhouse_url, pool_size=None)
    target = f"{ch_database}.t"
    cfg = make_config(
        [TableSpec("ks.t", target, delete="soft", destinations=("pg", "ch", "ts"))], dests, {"TS_DSN": ts_dsn}
    )
    assert await snapshot_command(cfg, table="ks.t", ranges=4, quiet=True) == 0
    capsys.readouterr()

    async def reconcile(**kw: Any) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        code = await reconcile_command(cfg, table="ks.t", as_json=True, ranges=4, settle=2, quiet=True, **kw)
        by_dest: dict[str, list[dict[str, Any]]] = {}
        for line in capsys.readouterr().out.splitlines():
            obj = json.loads(line)
            by_dest.setdefault(obj["destination"], []).append(obj)
        return code, by_dest

    code, out = await reconcile()
    assert code == 0 and {d: o[-1]["rows_compared"] for d, o in out.items()} == {"pg": 40, "ch": 40, "ts": 40}

    for dsn in (pg_dsn, ts_dsn):  # PostgreSQL and TimescaleDB
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DELETE FROM "{ch_database}".t WHERE p = 3')
            await conn.execute(f"UPDATE \"{ch_database}\".t SET a = 'tampered' WHERE p = 5")
            await conn.execute(f'UPDATE "{ch_database}".t SET _cdc_deleted = true WHERE p = 7')
            await conn.execute(
                f'INSERT INTO "{ch_database}".t (p, c, a, b, _cdc_write_time, _cdc_batch_seq, _cdc_row_marker) '
                "VALUES (100, 0, 'extra', 1, 5, 0, true)"
            )
        finally:
            await conn.close()
    ch = _ch(clickhouse_url)
    try:
        sync = {"mutations_sync": 2}
        ch.command(f"ALTER TABLE `{ch_database}`.t DELETE WHERE p = 3", settings=sync)
        ch.command(f"ALTER TABLE `{ch_database}`.t UPDATE a = 'tampered' WHERE p = 5", settings=sync)
        ch.command(f"ALTER TABLE `{ch_database}`.t UPDATE _cdc_deleted = 1 WHERE p = 7", settings=sync)
        ch.command(
            f"INSERT INTO `{ch_database}`.t (p, c, a, b, _cdc_version, _cdc_row_marker) VALUES (100, 0, 'extra', 1, 5, 1)"
        )
    finally:
        ch.close()

    code, out = await reconcile()
    assert code == 1
    for dest in ("pg", "ch", "ts"):
        *rows, summary = out[dest]
        assert sorted(((r["result"], r["key"]) for r in rows), key=repr) == [
            ("different", {"p": 5, "c": 0}), ("extra", {"p": 100, "c": 0}),
            ("missing", {"p": 3, "c": 0}), ("missing", {"p": 7, "c": 0}),
        ], dest  # fmt: skip
        diff = next(r for r in rows if r["result"] == "different")
        assert (diff["columns"], diff["source"], diff["destination_values"]) == (
            ["a"], {"a": "v5"}, {"a": "tampered"}
        ), dest  # fmt: skip
        assert {k: summary[k] for k in ("missing", "extra", "different", "rows_compared")} == {
            "missing": 2, "extra": 1, "different": 1, "rows_compared": 40
        }, dest  # fmt: skip

    code, out = await reconcile(repair=True)
    assert code == 0, out
    assert all(o[-1]["repaired"] == 4 and o[-1]["not_repaired"] == 0 for o in out.values()), out
    code, out = await reconcile()
    assert code == 0 and all(o == [o[-1]] for o in out.values()), out
    code, out = await reconcile(repair=True)  # idempotent: nothing to do the second time
    assert code == 0 and all(o[-1]["repaired"] == 0 for o in out.values()), out


@pytest.mark.slow
async def test_reconcile_while_a_destination_catches_up_reports_nothing(
    cql: Any, make_cdcd: MakeCdcd, make_config: MakeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    cql.execute(KS)
    cql.execute("CREATE TABLE ks.t (p int, c int, a text, PRIMARY KEY (p, c)) WITH cdc = {'enabled': true}")
    cdcd = make_cdcd([TableSpec("ks.t", "public.t")], ConfigOptions(batch_max_rows=100))
    cdcd.start()
    cdcd.wait_ready()
    insert = cql.prepare("INSERT INTO ks.t (p, c, a) VALUES (?, ?, ?)")
    for i in range(200):
        cql.execute(insert, (i % 50, i, f"first{i}"))
    cdcd.stop()
    # a burst the destination has not seen: new rows, updates and deletes
    delete = cql.prepare("DELETE FROM ks.t WHERE p = ? AND c = ?")
    for i in range(3000):
        if i % 10 == 0:
            cql.execute(delete, (i % 50, i // 10))
        else:
            cql.execute(insert, (i % 50, i % 400, f"burst{i}"))
    cdcd.start()
    cfg = make_config([TableSpec("ks.t", "public.t")])
    capsys.readouterr()
    code = await reconcile_command(cfg, table="ks.t", as_json=True, ranges=8, settle=15, quiet=True)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0, lines[:20]
    assert lines == [lines[-1]] and lines[-1]["rows_compared"] > 200
    assert lines[-1]["converged"] > 0, "the destination had caught up before the comparison"


async def test_daemon_snapshots_initial_tables_and_reconciles_on_schedule(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str
) -> None:
    """``snapshot = "initial"``: ``cdcd run`` copies the existing rows while streaming goes on;
    progress in /status and /metrics; ``reconcile_every`` logs a line per run and sets
    ``cdcd_reconcile_rows``; a restart does not redo the finished snapshot."""
    cql.execute(KS)
    cql.execute("CREATE TABLE ks.t (p int, c int, a text, PRIMARY KEY (p, c))")
    insert = cql.prepare("INSERT INTO ks.t (p, c, a) VALUES (?, ?, ?)")
    for i in range(500):
        cql.execute(insert, (i % 25, i, f"old{i}"))
    cql.execute("ALTER TABLE ks.t WITH cdc = {'enabled': true}")
    cdcd = make_cdcd([TableSpec("ks.t", "public.t")])
    text = cdcd.config.read_text().replace(
        'target = "public.t"', 'target = "public.t"\nsnapshot = "initial"\nreconcile_every = "2s"'
    )
    cdcd.config.write_text(text)
    cdcd.start()
    cdcd.wait_ready()
    for i in range(500, 600):  # streamed while the snapshot runs
        cql.execute(insert, (i % 25, i, f"new{i}"))
    conn = await asyncpg.connect(pg_dsn)
    try:
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM public.t") != 600:
            assert time.monotonic() < deadline, cdcd.log_tail()
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    snap = cdcd.status()["snapshots"]["ks.t"]
    assert (snap["state"], snap["destinations"], snap["ranges_done"]) == (
        "finished",
        ["pg"],
        snap["ranges_total"],
    )

    def metrics() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{cdcd.http_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    deadline = time.monotonic() + 60
    while "reconcile: source and destination agree" not in cdcd.log_text():
        assert time.monotonic() < deadline, cdcd.log_tail()
        await asyncio.sleep(0.2)
    body = metrics()
    assert re.search(
        r'cdcd_reconcile_rows\{destination="pg",replica="e2e",result="equal",table="ks.t"\} 600', body
    )
    assert re.search(
        r'cdcd_reconcile_rows\{destination="pg",replica="e2e",result="missing",table="ks.t"\} 0', body
    )
    assert re.search(r'cdcd_snapshot_rows\{replica="e2e",table="ks.t"\} 5\d\d', body)
    assert cdcd.stop() == 0
    cdcd.start()
    cdcd.wait_ready()
    assert cdcd.log_text().count('"snapshot started"') == 1  # finished: not redone


async def test_snapshot_fixes_rows_a_partial_update_reached_first(
    cql: Any, pg_dsn: str, make_config: MakeConfig
) -> None:
    """A streamed partial update applied before the snapshot writes the row leaves only the
    updated column at the newest version: the snapshot's older cells lose against it, and the
    range's verification writes the whole row. A row deleted in the source but resurrected by
    the snapshot's write is deleted again."""
    cql.execute(KS)
    cql.execute("CREATE TABLE ks.t (p int, c int, a text, b int, PRIMARY KEY (p, c))")
    for p in range(10):
        cql.execute("INSERT INTO ks.t (p, c, a, b) VALUES (%s, 0, %s, 1) USING TIMESTAMP 1000", (p, f"v{p}"))
    cql.execute("UPDATE ks.t USING TIMESTAMP 3000 SET b = 2 WHERE p = 4 AND c = 0")
    cql.execute("ALTER TABLE ks.t WITH cdc = {'enabled': true}")
    cfg = make_config([TableSpec("ks.t", "public.t")])
    assert await snapshot_command(cfg, table="ks.t", ranges=1, quiet=True, restart=True) == 0
    conn = await asyncpg.connect(pg_dsn)
    try:
        # what the stream would have done first: only b of row 4, at the update's write time
        await conn.execute("DELETE FROM public.t")
        await conn.execute(
            "INSERT INTO public.t (p, c, b, _cdc_write_time, _cdc_batch_seq, _cdc_row_marker) "
            "VALUES (4, 0, 2, 3000, 0, false)"
        )
        assert await snapshot_command(cfg, table="ks.t", ranges=1, quiet=True, restart=True) == 0
        rows = await conn.fetch("SELECT p, a, b FROM public.t ORDER BY p")
        assert [tuple(r) for r in rows] == [(p, f"v{p}", 2 if p == 4 else 1) for p in range(10)]
    finally:
        await conn.close()


async def test_snapshot_and_reconcile_mask_and_validate_like_the_stream(
    cql: Any, pg_dsn: str, make_config: MakeConfig
) -> None:
    """Snapshot rows take the daemon's path: a column matching a masking rule lands hashed, a row
    breaking a column rule goes to the validation queue (not the destination), and reconcile
    compares in masked form (no false difference for the hashed column)."""
    import hashlib
    import hmac

    key = "1f" * 32
    cql.execute(KS)
    cql.execute("CREATE TABLE ks.m (id int PRIMARY KEY, email text, qty int)")
    for i in range(20):
        cql.execute(
            "INSERT INTO ks.m (id, email, qty) VALUES (%s, %s, %s)",
            (i, f"u{i}@example.com", -1 if i == 7 else i),
        )
    cql.execute("ALTER TABLE ks.m WITH cdc = {'enabled': true}")
    spec = TableSpec("ks.m", "public.m", extra="[tables.columns.qty]\nmin = 0\n")
    masking = (
        '\n[masking]\nhash_key = "${M_HASH_KEY}"\n[[masking.rules]]\npattern = "^email$"\nstrategy = "hash"\n'
    )
    cfg = make_config([spec], masking, env={"M_HASH_KEY": key})
    assert await snapshot_command(cfg, table="ks.m", ranges=4, quiet=True) == 0
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = {r["id"]: r["email"] for r in await conn.fetch("SELECT id, email FROM public.m")}
    finally:
        await conn.close()
    assert set(rows) == set(range(20)) - {7}  # id 7 breaks qty >= 0: validation queue, not written
    digest = hmac.new(bytes.fromhex(key), b"u3@example.com", hashlib.sha256).hexdigest()
    assert rows[3] == f"hash_{digest}"
    assert not any("@" in v for v in rows.values())
    # reconcile compares masked with masked, through the same validation: the hashed column is
    # no difference, and the refused row is expected in the validation queue, not the table
    out = io.StringIO()
    code = await reconcile_command(cfg, table="ks.m", ranges=4, quiet=True, settle=2.0, as_json=True, out=out)
    (summary,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert code == 0 and summary["rows_compared"] == 20
    assert summary["missing"] == summary["different"] == summary["extra"] == 0

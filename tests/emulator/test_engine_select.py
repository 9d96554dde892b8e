"""SELECT: restrictions, ordering, paging, aggregates, CDC log queries, unsupported input."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.bulk import bulk_load

from .test_engine_helpers import new_engine, rows, run


def _grid(e: object) -> None:
    run(e, "CREATE TABLE t (pk int, c1 int, c2 int, v int, PRIMARY KEY (pk, c1, c2))")
    for pk in range(3):
        for c1 in range(3):
            for c2 in range(3):
                run(
                    e,
                    "INSERT INTO t (pk, c1, c2, v) VALUES (?, ?, ?, ?)",
                    pk,
                    c1,
                    c2,
                    pk * 100 + c1 * 10 + c2,
                )


def test_clustering_restrictions() -> None:
    e = new_engine()
    _grid(e)
    v = lambda q, *a: [r["v"] for r in rows(e, q, *a)]  # noqa: E731
    assert v("SELECT v FROM t WHERE pk = 1 AND c1 = 2") == [120, 121, 122]
    assert v("SELECT v FROM t WHERE pk = 1 AND c1 = 2 AND c2 >= 1") == [121, 122]
    assert v("SELECT v FROM t WHERE pk = 1 AND c1 > 0 AND c1 < 2") == [110, 111, 112]
    assert v("SELECT v FROM t WHERE pk = 1 AND (c1, c2) > (1, 1) AND (c1, c2) <= (2, 0)") == [112, 120]
    assert v("SELECT v FROM t WHERE pk = 1 AND c1 IN (2, 0) AND c2 = 1") == [101, 121]
    assert v("SELECT v FROM t WHERE pk IN (2, 0) AND c1 = 0 AND c2 = 0") == sorted(
        [0, 200],
        key=lambda x: [
            r["pk"] for r in rows(e, "SELECT pk FROM t WHERE pk IN (0, 2) AND c1 = 0 AND c2 = 0")
        ].index(x // 100),
    )
    assert v("SELECT v FROM t WHERE pk = 1 AND c1 = 0 ORDER BY c1 DESC, c2 DESC") == [102, 101, 100]
    assert v("SELECT v FROM t WHERE pk = 1 LIMIT 2") == [100, 101]
    assert len(rows(e, "SELECT v FROM t PER PARTITION LIMIT 2")) == 6
    with pytest.raises(CqlError, match="ALLOW FILTERING"):
        rows(e, "SELECT v FROM t WHERE v = 5")
    assert v("SELECT v FROM t WHERE v > 220 ALLOW FILTERING") == [221, 222]
    with pytest.raises(
        CqlError, match='PRIMARY KEY column "c2" cannot be restricted as preceding column "c1" is not'
    ):
        rows(e, "SELECT v FROM t WHERE pk = 1 AND c2 = 1")


def test_token_ranges_cover_each_partition_once() -> None:
    e = new_engine()
    _grid(e)
    toks = sorted({r["system.token(pk)"] for r in rows(e, "SELECT token(pk) FROM t")})
    assert len(toks) == 3
    first = rows(e, "SELECT pk FROM t WHERE token(pk) > ? AND token(pk) <= ?", -(2**63), toks[1])
    rest = rows(e, "SELECT pk FROM t WHERE token(pk) > ?", toks[1])
    assert len(first) == 18 and len(rest) == 9
    assert {r["pk"] for r in first}.isdisjoint({r["pk"] for r in rest})


def test_paging_resumes_after_last_row_with_limit() -> None:
    e = new_engine()
    _grid(e)
    got, state, pages = [], None, 0
    while True:
        r = e.execute_decoded(
            "SELECT pk, c1, c2 FROM t LIMIT 20", keyspace="ks", page_size=7, paging_state=state
        )
        got += [tuple(x) for x in r.rows]  # type: ignore[union-attr]
        pages += 1
        state = r.paging_state  # type: ignore[union-attr]
        if state is None:
            break
    assert pages == 3 and len(got) == 20 and len(set(got)) == 20
    full = [tuple(x) for x in e.execute_decoded("SELECT pk, c1, c2 FROM t LIMIT 20", keyspace="ks").rows]  # type: ignore[union-attr]
    assert got == full
    with pytest.raises(CqlError) as ei:
        e.execute_decoded("SELECT * FROM t", keyspace="ks", page_size=2, paging_state=b"garbage")
    assert ei.value.code == ErrorCode.PROTOCOL_ERROR


def test_aggregates_writetime_and_functions() -> None:
    e = new_engine()
    _grid(e)
    assert rows(e, "SELECT count(*) FROM t") == [{"count": 27}]
    assert rows(e, "SELECT count(*) AS n, min(v), max(v) FROM t WHERE pk = 2") == [
        {"n": 9, "system.min(v)": 200, "system.max(v)": 222}
    ]
    run(e, "CREATE TABLE u (pk int PRIMARY KEY, t timeuuid)")
    run(e, "INSERT INTO u (pk, t) VALUES (1, maxTimeuuid('2024-01-01 00:00:00+0000')) USING TIMESTAMP 42")
    r = rows(e, "SELECT toTimestamp(t), toUnixTimestamp(t), writetime(t) FROM u")[0]
    assert r == {
        "system.totimestamp(t)": dt.datetime(2024, 1, 1),
        "system.tounixtimestamp(t)": 1704067200000,
        "writetime(t)": 42,
    }


def test_cdc_log_window_queries_and_paging_splits_groups() -> None:
    e = new_engine()
    run(
        e,
        "CREATE TABLE t (pk int, ck int, v int, PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true, "
        "'preimage': true, 'postimage': true}",
    )
    start = e.now_us()
    bulk_load(
        e, "ks.t", ({"pk": i % 5, "ck": i % 7, "v": i} for i in range(60)), start_ts_us=start, step_us=1000
    )
    log = rows(e, 'SELECT "cdc$stream_id", "cdc$time", "cdc$batch_seq_no" FROM t_scylla_cdc_log')
    streams = sorted({r["cdc$stream_id"] for r in log})
    total = len(log)
    assert total > 60  # images add rows
    # all groups of all streams, read page by page with IN ? and time bounds
    q = (
        'SELECT "cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$end_of_batch" FROM t_scylla_cdc_log '
        'WHERE "cdc$stream_id" IN ? AND "cdc$time" >= minTimeuuid(?) AND "cdc$time" < minTimeuuid(?) '
        "BYPASS CACHE"
    )
    lo = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=start)
    hi = lo + dt.timedelta(seconds=1)
    got, state = [], None
    while True:
        r = e.execute_decoded(q, [streams, lo, hi], keyspace="ks", page_size=4, paging_state=state)
        got += r.rows  # type: ignore[union-attr]
        state = r.paging_state  # type: ignore[union-attr]
        if state is None:
            break
    assert len(got) == total
    keys = [(r[0], r[1], r[2]) for r in got]
    assert len(set(keys)) == total
    # per stream ordered by time then seq; every group ends with end_of_batch
    for s in streams:
        mine = [r for r in got if r[0] == s]
        assert [r[1].time for r in mine] == sorted(r[1].time for r in mine)
        assert mine[-1][3] is True
    # a window in the middle: only rows inside it
    mid = lo + dt.timedelta(milliseconds=20)
    inside = rows(
        e,
        'SELECT "cdc$time" FROM t_scylla_cdc_log WHERE "cdc$stream_id" = ? AND "cdc$time" > minTimeuuid(?)',
        streams[0],
        mid,
    )
    assert all(
        r["cdc$time"].time
        >= (mid - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1) * 10 + 0x01B21DD213814000
        for r in inside
    )


def test_log_rows_expire_after_cdc_ttl() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true, 'ttl': 60}")
    run(e, "INSERT INTO t (pk, v) VALUES (1, 1)")
    assert rows(e, "SELECT ttl(v) FROM t_scylla_cdc_log") == [{"ttl(v)": 60}]
    e.advance_clock(61)
    assert rows(e, "SELECT * FROM t_scylla_cdc_log") == []
    assert rows(e, "SELECT v FROM t") == [{"v": 1}]


@pytest.mark.parametrize(
    ("stmt", "code"),
    [
        ("CREATE INDEX ON t (v)", ErrorCode.INVALID),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", ErrorCode.INVALID),
        ("SELECT JSON * FROM t", ErrorCode.INVALID),
        ("INSERT INTO t JSON '{}'", ErrorCode.INVALID),
        ("GRANT SELECT ON t TO bob", ErrorCode.INVALID),
        ("SELECT * FROM t GROUP BY pk", ErrorCode.INVALID),
        ("SELEKT * FROM t", ErrorCode.SYNTAX_ERROR),
        ("SELECT * FROM t WHERE", ErrorCode.SYNTAX_ERROR),
        ("ALTER KEYSPACE ks WITH durable_writes = false", ErrorCode.INVALID),
    ],
)
def test_unsupported_or_malformed_statements_fail_loudly(stmt: str, code: int) -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int)")
    with pytest.raises(CqlError) as ei:
        run(e, stmt)
    assert ei.value.code == code
    assert ei.value.message


def test_quoted_identifiers_comments_and_named_binds() -> None:
    e = new_engine()
    run(e, 'CREATE TABLE "MixedCase" ("Key" int PRIMARY KEY, "vAl" text) -- trailing comment')
    run(e, 'INSERT /* inline */ INTO "MixedCase" ("Key", "vAl") VALUES (1, $$dollar \'quoted\'$$)')
    r = e.execute(
        'SELECT "vAl" AS x FROM "MixedCase" WHERE "Key" = :k',
        [(1).to_bytes(4, "big")],
        keyspace="ks",
        consistency=1,
        page_size=None,
        paging_state=None,
        timestamp=None,
        names=["k"],
    )
    assert r.rows == [["dollar 'quoted'"]]  # type: ignore[union-attr]
    assert r.columns[0].name == "x"  # type: ignore[union-attr]

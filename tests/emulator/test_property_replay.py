"""Property: replaying the CDC log reconstructs the base table.

Hypothesis draws random write sequences (inserts, updates, column/row/range/partition deletes,
static columns, map/set/list operations; no TTL) against a CDC table in the emulator, each
statement with its own increasing ``USING TIMESTAMP``. The log is read through the real driver,
its groups are applied in ``cdc$time`` order (rows within a group in ``batch_seq_no`` order) to a
plain Python model, and the model must equal ``SELECT *`` of the base table.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cassandra.cluster import Cluster, Session
from cassandra.query import dict_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PKS = st.integers(0, 2)
CKS = st.integers(0, 4)
VALS = st.integers(-5, 5)
KEYS = st.integers(0, 3)

STATEMENTS = st.one_of(
    st.builds(lambda p, c, v: f"INSERT INTO {{t}} (pk, ck, v) VALUES ({p}, {c}, {v})", PKS, CKS, VALS),
    st.builds(lambda p, c: f"INSERT INTO {{t}} (pk, ck) VALUES ({p}, {c})", PKS, CKS),
    st.builds(lambda p, c, v: f"UPDATE {{t}} SET v = {v} WHERE pk = {p} AND ck = {c}", PKS, CKS, VALS),
    st.builds(lambda p, c: f"UPDATE {{t}} SET v = null WHERE pk = {p} AND ck = {c}", PKS, CKS),
    st.builds(lambda p, v: f"UPDATE {{t}} SET s = {v} WHERE pk = {p}", PKS, VALS),
    st.builds(lambda p: f"DELETE s FROM {{t}} WHERE pk = {p}", PKS),
    st.builds(
        lambda p, c, k, v: f"UPDATE {{t}} SET m = m + {{{k}: {v}}} WHERE pk = {p} AND ck = {c}",
        PKS,
        CKS,
        KEYS,
        VALS,
    ),
    st.builds(
        lambda p, c, k: f"UPDATE {{t}} SET m = m - {{{k}}} WHERE pk = {p} AND ck = {c}", PKS, CKS, KEYS
    ),
    st.builds(
        lambda p, c, k, v: f"UPDATE {{t}} SET m = {{{k}: {v}}} WHERE pk = {p} AND ck = {c}",
        PKS,
        CKS,
        KEYS,
        VALS,
    ),
    st.builds(lambda p, c: f"DELETE m FROM {{t}} WHERE pk = {p} AND ck = {c}", PKS, CKS),
    st.builds(
        lambda p, c, k: f"UPDATE {{t}} SET st = st + {{{k}}} WHERE pk = {p} AND ck = {c}", PKS, CKS, KEYS
    ),
    st.builds(
        lambda p, c, k: f"UPDATE {{t}} SET st = st - {{{k}}} WHERE pk = {p} AND ck = {c}", PKS, CKS, KEYS
    ),
    st.builds(lambda p, c, v: f"UPDATE {{t}} SET l = l + [{v}] WHERE pk = {p} AND ck = {c}", PKS, CKS, VALS),
    st.builds(lambda p, c, v: f"UPDATE {{t}} SET l = [{v}, {v}] WHERE pk = {p} AND ck = {c}", PKS, CKS, VALS),
    st.builds(
        lambda p, c, v: f"INSERT INTO {{t}} (pk, ck, m, l) VALUES ({p}, {c}, {{1: {v}}}, [{v}])",
        PKS,
        CKS,
        VALS,
    ),
    st.builds(lambda p, c: f"DELETE FROM {{t}} WHERE pk = {p} AND ck = {c}", PKS, CKS),
    st.builds(lambda p: f"DELETE FROM {{t}} WHERE pk = {p}", PKS),
    st.builds(
        lambda p, a, b, lo, hi: f"DELETE FROM {{t}} WHERE pk = {p} AND ck {lo} {a} AND ck {hi} {a + b}",
        PKS,
        CKS,
        st.integers(1, 3),
        st.sampled_from([">", ">="]),
        st.sampled_from(["<", "<="]),
    ),
    st.builds(
        lambda p, a, cmp: f"DELETE FROM {{t}} WHERE pk = {p} AND ck {cmp} {a}",
        PKS,
        CKS,
        st.sampled_from(["<", "<=", ">", ">="]),
    ),
)

_names = itertools.count()


@pytest.fixture
def session(emulator: Any) -> Iterator[Session]:
    cluster = Cluster([emulator.host], port=emulator.port, protocol_version=4)
    s = cluster.connect()
    s.row_factory = dict_factory
    s.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
    try:
        yield s
    finally:
        cluster.shutdown()


def _timeuuid_key(u: uuid.UUID) -> tuple[int, bytes]:
    return (u.time, bytes(b ^ 0x80 for b in u.bytes[8:]))


def _micros(u: uuid.UUID) -> int:
    return (u.time - 0x01B21DD213814000) // 10


class Model:
    """The base table rebuilt from log rows: partitions -> static values and rows."""

    COLS = ("v", "m", "st", "l")

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, Any]] = {}

    def part(self, pk: int) -> dict[str, Any]:
        return self.parts.setdefault(pk, {"static": {}, "rows": {}})

    def apply_group(self, group: list[dict[str, Any]]) -> None:
        i = 0
        while i < len(group):
            r = group[i]
            op, p = r["cdc$operation"], self.part(r["pk"])
            if op in (1, 2) and r["ck"] is None:
                if r["cdc$deleted_s"]:
                    p["static"].pop("s", None)
                if r["s"] is not None:
                    p["static"]["s"] = r["s"]
            elif op in (1, 2):
                row = p["rows"].setdefault(r["ck"], {"marker": False})
                row["marker"] = row["marker"] or op == 2
                self._apply_cells(row, r)
            elif op == 3:
                p["rows"].pop(r["ck"], None)
            elif op == 4:
                p["rows"].clear()
                p["static"].clear()
            elif op in (5, 6):
                end = group[i + 1]
                i += 1
                for ck in list(p["rows"]):
                    lo = r["ck"] is None or ck > r["ck"] or (op == 5 and ck == r["ck"])
                    hi = (
                        end["ck"] is None or ck < end["ck"] or (end["cdc$operation"] == 7 and ck == end["ck"])
                    )
                    if lo and hi:
                        del p["rows"][ck]
            else:
                raise AssertionError(f"unexpected log row {r}")
            i += 1

    @staticmethod
    def _apply_cells(row: dict[str, Any], r: dict[str, Any]) -> None:
        if r["cdc$deleted_v"]:
            row.pop("v", None)
        if r["v"] is not None:
            row["v"] = r["v"]
        for c in ("m", "st", "l"):
            cur = {} if r[f"cdc$deleted_{c}"] else row.get(c, {})
            for k in r[f"cdc$deleted_elements_{c}"] or ():
                cur.pop(k, None)
            added = r[c] or {}
            cur.update({k: None for k in added} if c == "st" else dict(added.items()))
            row[c] = cur

    def expected(self) -> list[tuple[Any, ...]]:
        out = []
        for pk, p in self.parts.items():
            s = p["static"].get("s")
            live = []
            for ck, row in p["rows"].items():
                vals = (
                    row.get("v"),
                    dict(sorted(row["m"].items())) if row.get("m") else None,
                    set(row["st"]) if row.get("st") else None,
                    [row["l"][k] for k in sorted(row["l"], key=_timeuuid_key)] if row.get("l") else None,
                )
                if row["marker"] or any(x is not None for x in vals):
                    live.append((pk, ck, s, *vals))
            if live:
                out.extend(live)
            elif s is not None:
                out.append((pk, None, s, None, None, None, None))
        return sorted(out, key=repr)


def actual(session: Session, table: str) -> list[tuple[Any, ...]]:
    rows = session.execute(f"SELECT pk, ck, s, v, m, st, l FROM ks.{table}")
    out = []
    for r in rows:
        out.append(
            (
                r["pk"],
                r["ck"],
                r["s"],
                r["v"],
                dict(sorted(r["m"].items())) if r["m"] else None,
                set(r["st"]) if r["st"] else None,
                list(r["l"]) if r["l"] else None,
            )
        )
    return sorted(out, key=repr)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statements=st.lists(STATEMENTS, min_size=1, max_size=25))
def test_replaying_the_log_reconstructs_the_table(session: Session, statements: list[str]) -> None:
    table = f"t{next(_names)}"
    session.execute(
        f"CREATE TABLE ks.{table} (pk int, ck int, s int static, v int, m map<int, int>, st set<int>, "
        "l list<int>, PRIMARY KEY (pk, ck)) WITH cdc = {'enabled': true}"
    )
    ts = int(time.time() * 1_000_000)
    for stmt in statements:
        ts += 10  # distinct timestamps, room for a collection delete's T+1 group
        cql = stmt.replace("{t}", f"ks.{table}")
        if cql.startswith("INSERT"):
            cql = f"{cql} USING TIMESTAMP {ts}"
        else:
            cql = cql.replace(f"ks.{table} ", f"ks.{table} USING TIMESTAMP {ts} ", 1)
        session.execute(cql)
    rows = list(session.execute(f'SELECT * FROM ks."{table}_scylla_cdc_log"'))
    rows.sort(key=lambda r: (_micros(r["cdc$time"]), r["cdc$time"].bytes, r["cdc$batch_seq_no"]))
    model = Model()
    for _time, group in itertools.groupby(rows, key=lambda r: r["cdc$time"]):
        g = list(group)
        assert g[-1]["cdc$end_of_batch"] is True
        model.apply_group(g)
    assert actual(session, table) == model.expected()

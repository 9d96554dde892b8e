"""Deterministic random change workloads through the real driver (prepared statements,
``execute_concurrent``).

``Workload(session, "ks.table", seed=...)`` owns one table (``create()`` makes it and its UDT) and
generates a seeded random interleaving of every kind of CQL change cdcd must replicate: inserts
(full and key-only), partial updates, null-setting, list append/prepend/remove/element delete, set
add/remove, map put/merge/remove, whole-collection overwrites, UDT field and whole updates, frozen
values, static columns, row deletes, partition deletes and clustering-range deletes. The same
seed gives the same statement sequence; the resulting table state is read back from the source,
so no model of the expected state is needed.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cassandra import InvalidRequest
from cassandra.concurrent import execute_concurrent

__all__ = ["Workload"]

# (operation, weight); keep partition deletes rare so tables keep data.
OPS: list[tuple[str, int]] = [
    ("insert", 18), ("insert_key_only", 1), ("update", 14), ("set_null", 4), ("delete_cells", 2),
    ("list_append", 5), ("list_prepend", 3), ("list_remove", 3), ("list_delete_index", 1),
    ("list_overwrite", 2), ("set_add", 5), ("set_remove", 3), ("set_overwrite", 1), ("map_put", 5),
    ("map_merge", 2), ("map_remove", 3), ("map_overwrite", 1), ("udt_field", 3), ("udt_whole", 1),
    ("frozen", 2), ("static", 3), ("static_null", 1), ("row_delete", 6), ("range_delete", 2),
    ("partition_delete", 1),
]  # fmt: skip

TIME_CK_BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)  # ck of index 0 with ``time_ck``
WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "日本", "", "ü"]


@dataclass
class Result:
    """What a run executed: statements per operation, and tolerated errors (list index ops)."""

    ops: Counter[str] = field(default_factory=Counter)
    tolerated_errors: int = 0

    @property
    def changes(self) -> int:
        return sum(self.ops.values())


class Workload:
    """Random changes to one table ``ks.table``; see the module docstring."""

    def __init__(
        self,
        session: Any,
        table: str,
        *,
        seed: int,
        partitions: int = 40,
        rows_per_partition: int = 40,
        time_ck: dt.timedelta | None = None,
        client_timestamps: bool = False,
    ) -> None:
        """``time_ck``: the clustering column ``ck`` is a ``timestamp`` (clustering index ``i`` is
        ``2024-01-01 + i * time_ck``, e.g. for a TimescaleDB hypertable), not an ``int``; the
        random sequence is the same either way.

        ``client_timestamps``: the driver stamps each write when it issues it (its default). Off
        (the default here), the server stamps it when it applies it. On a loaded test machine a
        client-stamped write can reach the emulator seconds later (queued behind other requests),
        landing in the CDC log behind a reader's confidence window: the documented hazard of
        client-side timestamps (scylla-cdc.md §4.3), which no reader can survive and which these
        workloads do not test (the emulator logs such "late writes")."""
        self.session = session
        self.time_ck = time_ck
        self.client_timestamps = client_timestamps
        self.table = table
        self.keyspace, _, self.name = table.partition(".")
        self.rng = random.Random(seed)
        self.partitions = partitions
        self.rows = rows_per_partition
        self._prepared: dict[str, Any] = {}
        self._weights = [w for _, w in OPS]
        self._names = [n for n, _ in OPS]

    # -- schema -------------------------------------------------------------------------------
    def create(self, *, keyspace: bool = True, tablets: bool | None = None) -> None:
        """``tablets``: create the keyspace with ``tablets = {'enabled': true|false}`` (None: the
        server's default for new keyspaces)."""
        s = self.session
        if keyspace:
            opt = "" if tablets is None else f" AND tablets = {{'enabled': {str(tablets).lower()}}}"
            s.execute(
                f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = "
                "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}" + opt
            )
        s.execute(f"CREATE TYPE IF NOT EXISTS {self.keyspace}.wl_udt (a int, b text)")
        ck_type = "timestamp" if self.time_ck else "int"
        s.execute(
            f"""CREATE TABLE {self.table} (
                pk int, ck {ck_type}, s text static, sn int static,
                v text, n bigint, d double, l list<int>, st set<text>, m map<text, int>,
                u wl_udt, fl frozen<list<text>>,
                PRIMARY KEY (pk, ck)
            ) WITH cdc = {{'enabled': true}}"""
        )

    # -- generation ---------------------------------------------------------------------------
    def _stmt(self, cql: str) -> Any:
        stmt = self._prepared.get(cql)
        if stmt is None:
            stmt = self.session.prepare(cql.replace("{t}", self.table))
            self._prepared[cql] = stmt
        return stmt

    def _ck(self, i: int) -> Any:
        """The clustering value of clustering index ``i``."""
        return i if self.time_ck is None else TIME_CK_BASE + i * self.time_ck

    def _key(self) -> tuple[int, Any]:
        return self.rng.randrange(self.partitions), self._ck(self.rng.randrange(self.rows))

    def _word(self) -> str:
        return self.rng.choice(WORDS) + str(self.rng.randrange(1000))

    def _maybe(self, make: Callable[[], Any], p_null: float = 0.15) -> Any:
        return None if self.rng.random() < p_null else make()

    def _list(self) -> list[int]:
        return [self.rng.randrange(-50, 50) for _ in range(self.rng.randrange(1, 4))]

    def _set(self) -> set[str]:
        return {self._word() for _ in range(self.rng.randrange(1, 4))}

    def _map(self) -> dict[str, int]:
        return {self.rng.choice(WORDS): self.rng.randrange(100) for _ in range(self.rng.randrange(1, 4))}

    def _udt(self) -> tuple[Any, Any]:
        return (self._maybe(lambda: self.rng.randrange(1000)), self._maybe(self._word))

    def next_change(self) -> tuple[str, Any, list[Any]]:
        """One random change: (operation name, prepared statement, values)."""
        r = self.rng
        op = r.choices(self._names, self._weights)[0]
        pk, ck = self._key()
        if op == "insert":
            cols = ["v", "n", "d", "l", "st", "m", "u", "fl", "s"]
            vals = [
                self._maybe(self._word), self._maybe(lambda: r.randrange(-(2**40), 2**40)),
                self._maybe(lambda: r.uniform(-1e6, 1e6)), self._maybe(self._list), self._maybe(self._set),
                self._maybe(self._map), self._maybe(self._udt), self._maybe(lambda: [self._word()]),
                self._maybe(self._word, 0.7),
            ]  # fmt: skip
            keep = [i for i in range(len(cols)) if r.random() < 0.8]
            names = ", ".join(["pk", "ck", *(cols[i] for i in keep)])
            marks = ", ".join("?" * (2 + len(keep)))
            return (
                op,
                self._stmt(f"INSERT INTO {{t}} ({names}) VALUES ({marks})"),
                [pk, ck, *(vals[i] for i in keep)],
            )
        where = "WHERE pk = ? AND ck = ?"
        simple: dict[str, tuple[str, list[Any]]] = {
            "insert_key_only": ("INSERT INTO {t} (pk, ck) VALUES (?, ?)", []),
            "update": (f"UPDATE {{t}} SET v = ?, n = ? {where}", [self._word(), r.randrange(10**6)]),
            "set_null": (
                f"UPDATE {{t}} SET {r.choice(['v', 'n', 'd', 'l', 'st', 'm', 'u', 'fl'])} = null {where}",
                [],
            ),
            "delete_cells": (f"DELETE v, d, st FROM {{t}} {where}", []),
            "list_append": (f"UPDATE {{t}} SET l = l + ? {where}", [self._list()]),
            "list_prepend": (f"UPDATE {{t}} SET l = ? + l {where}", [self._list()]),
            "list_remove": (
                f"UPDATE {{t}} SET l = l - ? {where}",
                [[r.randrange(-50, 50) for _ in range(5)]],
            ),
            "list_delete_index": (f"DELETE l[?] FROM {{t}} {where}", [r.randrange(3)]),
            "list_overwrite": (f"UPDATE {{t}} SET l = ? {where}", [self._list()]),
            "set_add": (f"UPDATE {{t}} SET st = st + ? {where}", [self._set()]),
            "set_remove": (f"UPDATE {{t}} SET st = st - ? {where}", [{self._word() for _ in range(3)}]),
            "set_overwrite": (f"UPDATE {{t}} SET st = ? {where}", [self._set()]),
            "map_put": (f"UPDATE {{t}} SET m[?] = ? {where}", [r.choice(WORDS), r.randrange(100)]),
            "map_merge": (f"UPDATE {{t}} SET m = m + ? {where}", [self._map()]),
            "map_remove": (f"DELETE m[?] FROM {{t}} {where}", [r.choice(WORDS)]),
            "map_overwrite": (f"UPDATE {{t}} SET m = ? {where}", [self._map()]),
            "udt_whole": (f"UPDATE {{t}} SET u = ? {where}", [self._udt()]),
            "frozen": (
                f"UPDATE {{t}} SET fl = ? {where}",
                [[self._word() for _ in range(r.randrange(0, 3))]],
            ),
            "row_delete": (f"DELETE FROM {{t}} {where}", []),
        }
        if op == "udt_field":  # u.a int / u.b text, sometimes set to null
            fld = r.choice("ab")
            value = self._maybe(lambda: r.randrange(1000)) if fld == "a" else self._maybe(self._word)
            return op, self._stmt(f"UPDATE {{t}} SET u.{fld} = ? {where}"), [value, pk, ck]
        if op in simple:
            text, vals = simple[op]
            return op, self._stmt(text), [*vals, pk, ck]
        if op == "static":
            return (
                op,
                self._stmt("UPDATE {t} SET s = ?, sn = ? WHERE pk = ?"),
                [self._word(), r.randrange(99), pk],
            )
        if op == "static_null":
            return op, self._stmt("UPDATE {t} SET s = null WHERE pk = ?"), [pk]
        if op == "partition_delete":
            return op, self._stmt("DELETE FROM {t} WHERE pk = ?"), [pk]
        assert op == "range_delete", op
        lo = r.randrange(self.rows)
        hi = min(self.rows, lo + r.randrange(1, 6))
        shape = r.choice(["ck > ? AND ck <= ?", "ck >= ? AND ck < ?", "ck >= ?", "ck < ?"])
        vals = [self._ck(lo), self._ck(hi)] if "AND" in shape else [self._ck(lo if ">" in shape else hi)]
        return op, self._stmt(f"DELETE FROM {{t}} WHERE pk = ? AND {shape}"), [pk, *vals]

    def changes(self, n: int) -> Iterator[tuple[str, Any, list[Any]]]:
        for _ in range(n):
            yield self.next_change()

    # -- execution ----------------------------------------------------------------------------
    def run(
        self, n: int, *, concurrency: int = 64, chunk: int = 1000, result: Result | None = None
    ) -> Result:
        """Execute ``n`` random changes; raises on any error except a list index out of range."""
        result = result or Result()
        left = n
        stamped = self.session.use_client_timestamp
        self.session.use_client_timestamp = self.client_timestamps
        try:
            self._run(left, concurrency, chunk, result)
        finally:
            self.session.use_client_timestamp = stamped
        return result

    def _run(self, left: int, concurrency: int, chunk: int, result: Result) -> None:
        while left > 0:
            batch = list(self.changes(min(chunk, left)))
            left -= len(batch)
            outcomes = execute_concurrent(
                self.session,
                [(stmt, vals) for _, stmt, vals in batch],
                concurrency=concurrency,
                raise_on_first_error=False,
            )
            for (op, _, vals), (ok, res) in zip(batch, outcomes, strict=True):
                if ok:
                    result.ops[op] += 1
                elif op == "list_delete_index" and isinstance(res, InvalidRequest):
                    result.tolerated_errors += 1  # no element at that index: nothing changed
                else:
                    raise AssertionError(f"workload {op} {vals!r} failed: {res!r}")

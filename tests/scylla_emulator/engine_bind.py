"""Bind markers and term evaluation.

``collect_specs(stmt, catalog, keyspace)`` walks a statement and returns the ``ColumnSpec`` of every
bind marker (types inferred from context, names as Cassandra reports them) and the pk indexes.
``Terms`` evaluates AST terms (literals, bound values, CQL functions) to storage values.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from typing import Any

from cassandra import util as CU

from tests.scylla_emulator.api import UNSET, ColumnSpec, CqlError, ErrorCode
from tests.scylla_emulator.catalog import Catalog, TableRt
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cqltypes_util import (
    CType,
    datetime_to_ms,
    literal_value,
    ms_to_datetime,
    normalize,
)

__all__ = [
    "ListIndex",
    "Terms",
    "collect_specs",
    "max_timeuuid",
    "min_timeuuid",
    "timeuuid_from_ticks",
    "timeuuid_from_us",
]

T_INT = CType("int")
T_BIGINT = CType("bigint")
T_TIMESTAMP = CType("timestamp")
T_TIMEUUID = CType("timeuuid")
T_DURATION = CType("duration")
T_UUID = CType("uuid")
T_BOOL = CType("boolean")
_UUID_EPOCH = 0x01B21DD213814000


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


class ListIndex:
    """``SCYLLA_TIMEUUID_LIST_INDEX(k)``: a list element addressed by its cell key."""

    __slots__ = ("key",)

    def __init__(self, key: uuid.UUID) -> None:
        self.key = key


def timeuuid_from_us(us: int, lsb: int) -> uuid.UUID:
    return timeuuid_from_ticks(us * 10 + _UUID_EPOCH, lsb)


def timeuuid_from_ticks(ticks: int, lsb: int) -> uuid.UUID:
    time_low = ticks & 0xFFFFFFFF
    time_mid = (ticks >> 32) & 0xFFFF
    time_hi = ((ticks >> 48) & 0x0FFF) | 0x1000
    msb = (time_low << 32) | (time_mid << 16) | time_hi
    return uuid.UUID(int=(msb << 64) | lsb)


def min_timeuuid(ms: int) -> uuid.UUID:
    return timeuuid_from_us(ms * 1000, 0x8080808080808080)


def max_timeuuid(ms: int) -> uuid.UUID:
    # largest timeuuid (signed-byte order) of the millisecond: last tick, low bytes 7f..
    return timeuuid_from_ticks((ms + 1) * 10_000 + _UUID_EPOCH - 1, 0x7F7F7F7F7F7F7F7F)


def _ts_arg(v: Any) -> int:
    """Milliseconds from a timestamp/bigint/timeuuid argument."""
    if v is None:
        raise inv("null argument")
    if isinstance(v, int):
        return v
    if isinstance(v, uuid.UUID):
        return (v.time - _UUID_EPOCH) // 10_000
    if isinstance(v, CU.Date):
        return v.days_from_epoch * 86_400_000
    return datetime_to_ms(v)


# Function name -> (argument type, result type)
FUNCTIONS: dict[str, tuple[CType | None, CType]] = {
    "now": (None, T_TIMEUUID),
    "currenttimeuuid": (None, T_TIMEUUID),
    "uuid": (None, T_UUID),
    "currenttimestamp": (None, T_TIMESTAMP),
    "currentdate": (None, CType("date")),
    "currenttime": (None, CType("time")),
    "mintimeuuid": (T_TIMESTAMP, T_TIMEUUID),
    "maxtimeuuid": (T_TIMESTAMP, T_TIMEUUID),
    "totimestamp": (T_TIMEUUID, T_TIMESTAMP),
    "tounixtimestamp": (T_TIMEUUID, T_BIGINT),
    "dateof": (T_TIMEUUID, T_TIMESTAMP),
    "unixtimestampof": (T_TIMEUUID, T_BIGINT),
    "todate": (T_TIMEUUID, CType("date")),
    "scylla_timeuuid_list_index": (T_TIMEUUID, T_TIMEUUID),
}


class Terms:
    """Evaluates terms against bound values. ``values`` are raw bytes from the protocol (or already
    decoded Python values when ``decoded``)."""

    def __init__(
        self,
        values: list[Any],
        names: list[str] | None,
        specs: list[ColumnSpec] | None,
        now_us: Callable[[], int],
        decoded: bool = False,
    ) -> None:
        self.values = values
        self.names = names
        self.now_us = now_us
        self.decoded = decoded
        self._by_name: dict[str, int] | None = None
        if names is not None:
            self._by_name = {n.lower(): i for i, n in enumerate(names)}

    def raw(self, b: A.Bind) -> Any:
        idx = b.index
        if self._by_name is not None and b.name is not None:
            if b.name not in self._by_name:
                raise inv(f"No value for named bind marker :{b.name}")
            idx = self._by_name[b.name]
        if idx >= len(self.values):
            raise inv(f"There were {len(self.values)} markers(?) in CQL but {idx + 1} or more bound values")
        return self.values[idx]

    def value(self, term: Any, t: CType) -> Any:
        if isinstance(term, A.Bind):
            raw = self.raw(term)
            if raw is None or raw is UNSET:
                return raw
            if self.decoded:
                return normalize(raw, t)
            try:
                v = t.cass.from_binary(raw, 4)
            except Exception as e:
                raise inv(f"Exception while binding column {t.text}: {e}") from e
            return normalize(v, t)
        if isinstance(term, A.FuncCall):
            return self.call(term, t)
        return literal_value(term, t, self.value)

    def call(self, f: A.FuncCall, t: CType | None = None) -> Any:
        name = f.name
        if name not in FUNCTIONS:
            if name.startswith(("blobas", "as")) or name.endswith("asblob"):
                raise inv(f"Unsupported by the Scylla emulator: function {name}")
            raise inv(f"Unknown function '{name}'")
        argt, _ = FUNCTIONS[name]
        if argt is None:
            if f.args:
                raise inv(
                    f"Invalid number of arguments in call to function system.{name}: 0 required but "
                    f"{len(f.args)} provided"
                )
        elif len(f.args) != 1:
            raise inv(
                f"Invalid number of arguments in call to function system.{name}: 1 required but "
                f"{len(f.args)} provided"
            )
        now = self.now_us()
        if name in ("now", "currenttimeuuid"):
            return timeuuid_from_us(now, (random.getrandbits(64) & 0x3FFFFFFFFFFFFFFF) | 0x8000000000000000)
        if name == "uuid":
            return uuid.UUID(bytes=os.urandom(16), version=4)
        if name == "currenttimestamp":
            return ms_to_datetime(now // 1000)
        if name == "currentdate":
            return CU.Date(now // 86_400_000_000)
        if name == "currenttime":
            return CU.Time((now % 86_400_000_000) * 1000)
        assert argt is not None
        arg = self.value(
            f.args[0],
            argt
            if name not in ("totimestamp", "tounixtimestamp", "todate")
            else _guess_arg_type(f.args[0], argt),
        )
        if arg is None:
            return None
        if name == "mintimeuuid":
            return min_timeuuid(_ts_arg(arg))
        if name == "maxtimeuuid":
            return max_timeuuid(_ts_arg(arg))
        if name in ("totimestamp", "dateof"):
            return ms_to_datetime(_ts_arg(arg))
        if name in ("tounixtimestamp", "unixtimestampof"):
            return _ts_arg(arg)
        if name == "todate":
            return CU.Date(_ts_arg(arg) // 86_400_000)
        if name == "scylla_timeuuid_list_index":
            return ListIndex(arg)
        raise inv(f"Unknown function '{name}'")  # pragma: no cover


def _guess_arg_type(term: Any, default: CType) -> CType:
    if isinstance(term, A.Literal) and term.kind == "string":
        return T_TIMESTAMP
    if isinstance(term, A.Literal) and term.kind == "int":
        return T_BIGINT
    return default


# ------------------------------------------------------------------------------ spec collection
class _Specs:
    def __init__(self, n: int) -> None:
        self.specs: list[ColumnSpec | None] = [None] * n

    def put(self, b: A.Bind, ks: str, table: str, name: str, t: CType) -> None:
        if b.index < len(self.specs):
            self.specs[b.index] = ColumnSpec(ks, table, b.name or name, t.cass)


def _walk_term(sp: _Specs, term: Any, ks: str, table: str, name: str, t: CType) -> None:  # noqa: PLR0917
    if isinstance(term, A.Bind):
        sp.put(term, ks, table, name, t)
    elif isinstance(term, A.FuncCall):
        argt, _ = FUNCTIONS.get(term.name, (None, T_BIGINT))
        for a in term.args:
            _walk_term(sp, a, ks, table, f"{term.name}(arg0)" if False else name, argt or T_BIGINT)
    elif isinstance(term, A.ListLit) and t.params:
        for x in term.items:
            _walk_term(sp, x, ks, table, name, t.params[0] if t.name != "map" else t.params[1])
    elif isinstance(term, A.SetLit) and t.params:
        for x in term.items:
            _walk_term(sp, x, ks, table, name, t.params[0])
    elif isinstance(term, A.MapLit) and len(t.params) == 2:
        for k, v in term.pairs:
            _walk_term(sp, k, ks, table, name, t.params[0])
            _walk_term(sp, v, ks, table, name, t.params[1])
    elif isinstance(term, A.TupleLit):
        for x, p in zip(term.items, t.params, strict=False):
            _walk_term(sp, x, ks, table, name, p)
    elif isinstance(term, A.UdtLit) and t.name == "udt":
        for fname, x in term.fields:
            if fname in t.field_names:
                _walk_term(sp, x, ks, table, name, t.params[t.field_names.index(fname)])


def _using(sp: _Specs, u: A.Using, ks: str, table: str) -> None:
    if u.ttl is not None:
        _walk_term(sp, u.ttl, ks, table, "[ttl]", T_INT)
    if u.timestamp is not None:
        _walk_term(sp, u.timestamp, ks, table, "[timestamp]", T_BIGINT)
    if u.timeout is not None:
        _walk_term(sp, u.timeout, ks, table, "[timeout]", T_DURATION)


def _relations(sp: _Specs, rels: list[A.Relation], rt: TableRt) -> None:
    ks, tb = rt.keyspace, rt.name
    for r in rels:
        kind, lhs = r.lhs
        if kind == "token":
            _walk_term(sp, r.rhs, ks, tb, "partition key token", T_BIGINT)
            continue
        if kind == "multi":
            types = [rt.types[c] for c in lhs if c in rt.types]
            tt = CType("tuple", tuple(types), True)
            if r.op == "in":
                if isinstance(r.rhs, A.Bind):
                    sp.put(r.rhs, ks, tb, "in(" + ",".join(lhs) + ")", CType("list", (tt,), True))
                else:
                    for x in r.rhs:
                        _walk_term(sp, x, ks, tb, ",".join(lhs), tt)
            else:
                _walk_term(sp, r.rhs, ks, tb, ",".join(lhs), tt)
            continue
        t = rt.types.get(lhs)
        if t is None:
            continue
        if r.op == "in":
            if isinstance(r.rhs, A.Bind):
                sp.put(r.rhs, ks, tb, f"in({lhs})", CType("list", (t,), True))
            else:
                for x in r.rhs:
                    _walk_term(sp, x, ks, tb, lhs, t)
        elif r.op == "contains":
            et = t.params[1] if t.name == "map" else (t.params[0] if t.params else t)
            _walk_term(sp, r.rhs, ks, tb, lhs, et)
        elif r.op == "contains_key":
            _walk_term(sp, r.rhs, ks, tb, lhs, t.params[0] if t.params else t)
        else:
            _walk_term(sp, r.rhs, ks, tb, lhs, t)


def _conditions(sp: _Specs, conds: list[A.Condition], rt: TableRt) -> None:
    for c in conds:
        t = rt.types.get(c.column)
        if t is None:
            continue
        vt = t
        if c.element is not None and t.params:
            kt = CType("int") if t.name == "list" else t.params[0]
            _walk_term(sp, c.element, rt.keyspace, rt.name, f"key({c.column})", kt)
            vt = t.params[-1]
        elif c.field is not None and t.name == "udt" and c.field in t.field_names:
            vt = t.params[t.field_names.index(c.field)]
        if c.op == "in":
            if isinstance(c.value, A.Bind):
                sp.put(c.value, rt.keyspace, rt.name, f"in({c.column})", CType("list", (vt,), True))
            else:
                for x in c.value:
                    _walk_term(sp, x, rt.keyspace, rt.name, c.column, vt)
        else:
            _walk_term(sp, c.value, rt.keyspace, rt.name, c.column, vt)


def _assignment_type(a: Any, t: CType) -> tuple[str, CType]:
    if isinstance(a, A.RemoveFrom) and t.name == "map":
        return a.column, CType("set", (t.params[0],), True)
    if isinstance(a, A.AddTo | A.RemoveFrom) and t.name == "counter":
        return a.column, T_BIGINT
    return a.column, t


def _statement(sp: _Specs, st: Any, cat: Catalog, keyspace: str | None) -> None:
    if isinstance(st, A.Batch):
        _using(sp, st.using, keyspace or "", "")
        for child in st.statements:
            _statement(sp, child, cat, keyspace)
        return
    if not isinstance(st, A.Insert | A.Update | A.Delete | A.Select):
        return
    ks = st.keyspace or keyspace
    tname = st.table
    rt = cat.find_table(ks, tname) if ks is not None else None
    if rt is None:
        return
    if isinstance(st, A.Insert):
        for c, term in zip(st.columns, st.values, strict=False):
            if c in rt.types:
                _walk_term(sp, term, rt.keyspace, rt.name, c, rt.types[c])
        _using(sp, st.using, rt.keyspace, rt.name)
    elif isinstance(st, A.Update):
        _using(sp, st.using, rt.keyspace, rt.name)
        for a in st.assignments:
            t = rt.types.get(a.column)
            if t is None:
                continue
            if isinstance(a, A.SetElement):
                kt = CType("int") if t.name == "list" else (t.params[0] if t.params else t)
                _walk_term(sp, a.key, rt.keyspace, rt.name, f"key({a.column})", kt)
                _walk_term(
                    sp, a.value, rt.keyspace, rt.name, f"value({a.column})", t.params[-1] if t.params else t
                )
            elif isinstance(a, A.SetField):
                ft = t.params[t.field_names.index(a.field)] if a.field in t.field_names else t
                _walk_term(sp, a.value, rt.keyspace, rt.name, f"{a.column}.{a.field}", ft)
            else:
                name, at = _assignment_type(a, t)
                _walk_term(sp, a.value, rt.keyspace, rt.name, name, at)
        _relations(sp, st.where, rt)
        _conditions(sp, st.conditions, rt)
    elif isinstance(st, A.Delete):
        for tg in st.targets:
            t = rt.types.get(tg.column)
            if tg.key is not None and t is not None:
                kt = CType("int") if t.name == "list" else (t.params[0] if t.params else t)
                _walk_term(sp, tg.key, rt.keyspace, rt.name, f"key({tg.column})", kt)
        _using(sp, st.using, rt.keyspace, rt.name)
        _relations(sp, st.where, rt)
        _conditions(sp, st.conditions, rt)
    else:
        _relations(sp, st.where, rt)
        if st.limit is not None:
            _walk_term(sp, st.limit, rt.keyspace, rt.name, "[limit]", T_INT)
        if st.per_partition_limit is not None:
            _walk_term(sp, st.per_partition_limit, rt.keyspace, rt.name, "[per_partition_limit]", T_INT)
        _using(sp, st.using, rt.keyspace, rt.name)


def collect_specs(st: Any, n: int, cat: Catalog, keyspace: str | None) -> tuple[list[ColumnSpec], list[int]]:
    """ColumnSpecs of the ``n`` bind markers of ``st`` and the pk indexes (for token routing)."""
    sp = _Specs(n)
    _statement(sp, st, cat, keyspace)
    specs: list[ColumnSpec] = []
    for i, s in enumerate(sp.specs):
        if s is None:
            raise inv(f"Cannot infer the type of bind marker {i} (unsupported position)")
        specs.append(s)
    pk_idx: list[int] = []
    if isinstance(st, A.Insert | A.Update | A.Delete | A.Select):
        ks = st.keyspace or keyspace
        rt = cat.find_table(ks, st.table) if ks else None
        if rt is not None:
            pos: dict[str, int] = {}
            if isinstance(st, A.Insert):
                for c, term in zip(st.columns, st.values, strict=False):
                    if isinstance(term, A.Bind):
                        pos[c] = term.index
            else:
                for r in st.where:
                    if r.lhs[0] == "col" and r.op == "=" and isinstance(r.rhs, A.Bind):
                        pos[r.lhs[1]] = r.rhs.index
            if all(n in pos for n in rt.pk_names):
                pk_idx = [pos[n] for n in rt.pk_names]
    return specs, pk_idx

"""Compare a Scylla (emulator) table with its ClickHouse replica, field by field.

The comparable form is ``tests/e2e/compare.py``'s (so its ``Snapshot`` and ``diff`` apply),
following the ClickHouse type map (docs/type-map-clickhouse.md), written independently of
``cdcd/sinks/clickhouse/``. ``Array``/``Map`` cannot be ``Nullable``: an empty one is null, except a
frozen collection named in the row's ``_cdc_empty`` (an empty *value*, as in CQL). Durations keep
their nanoseconds (``Tuple(months, days, nanoseconds)`` is exact; PostgreSQL's ``interval`` is not).

Two forms differ from PostgreSQL's, as documented for ClickHouse: a ``set<uuid>`` column is kept in
CQL's uuid order (version, then time for version 1, then signed bytes), not by 128-bit value; and a
collection-typed field of a tuple or UDT is a plain ``Array``/``Map`` (not ``Nullable``), so a null
field and an empty one cannot be told apart: both compare as null, on both sides.

IPv4 addresses come back IPv4-mapped (``IPv6``) and compare as the IPv4 address. Replica rows are
``SELECT .. FINAL`` (delete markers hidden by ``FINAL``), soft-deleted rows skipped.
``wait_ch_converged`` polls until the replica equals the source, or fails with the diff.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import time
import uuid
from collections.abc import Callable
from typing import Any

from cassandra.query import SimpleStatement

from cdcd.schema import CqlType, TableSchema
from tests.e2e.compare import Snapshot, _dicts, _is_array, diff, src_value

__all__ = ["ch_snapshot", "ch_source_snapshot", "ch_value", "wait_ch_converged"]

UTC = dt.UTC
_COLLECTIONS = ("list", "set", "map")
_TEXT = ("ascii", "text", "varchar")
_EMPTY = "_cdc_empty"
_INTS = ("tinyint", "smallint", "int", "bigint", "counter", "varint")


def _uuid_order(u: uuid.UUID) -> tuple[Any, ...]:
    """CQL's order of ``uuid`` values: version, then the timestamp of version-1 uuids, then the 16
    bytes compared as signed bytes."""
    version = u.bytes[6] >> 4
    return (version, u.time if version == 1 else 0, tuple(b - 256 if b > 127 else b for b in u.bytes))


def _nested_empty_is_null(t: CqlType, v: Any) -> Any:
    """A comparable value with every empty collection-typed tuple/UDT field made null (ClickHouse
    cannot store null there, see the module docstring); a non-frozen UDT left without fields is null."""
    if v is None:
        return None
    n = t.name
    if n in ("list", "set"):
        return tuple(_nested_empty_is_null(t.params[0], x) for x in v)
    if n == "map":
        kt, vt = t.params
        return tuple((_nested_empty_is_null(kt, k), _nested_empty_is_null(vt, x)) for k, x in v)
    if n == "tuple":
        return tuple(_field(p, x) for p, x in zip(t.params, v, strict=True))
    if n == "udt":
        assert t.udt is not None
        out = tuple((name, _field(ft, x)) for (name, x), ft in zip(v, t.udt.field_types, strict=True))
        return None if t.is_multicell and all(x is None for _, x in out) else out
    return v


def _field(t: CqlType, v: Any) -> Any:
    v = _nested_empty_is_null(t, v)
    return None if t.name in _COLLECTIONS and v == () else v


def _src(t: CqlType, v: Any) -> Any:
    """Driver value -> comparable form as ClickHouse stores it."""
    if v is None:
        return None
    if t.name == "duration":
        return (int(v.months), int(v.days), int(v.nanoseconds))
    if t.name == "set" and _is_array(t) and t.params[0].name == "uuid":
        return tuple(uuid.UUID(str(x)) for x in sorted(v, key=_uuid_order))
    return _nested_empty_is_null(t, src_value(t, v))


def ch_value(t: CqlType, v: Any, *, json: bool = False) -> Any:
    """A clickhouse-connect value (String read as bytes, Tuple as tuple) -> comparable form.
    ``json``: nested inside a collection/tuple/UDT (same rule as ``compare.src_value``)."""
    n = t.name
    if v is None:
        return None
    if n in _TEXT:
        return v.decode() if isinstance(v, bytes) else str(v)
    if n in _INTS or n == "time":
        return int(v)
    if n == "decimal":
        return format(decimal.Decimal(v.decode() if isinstance(v, bytes) else v), "f")
    if n in ("float", "double"):
        return repr(float(v))
    if n == "boolean":
        return bool(v)
    if n in ("uuid", "timeuuid"):
        return uuid.UUID(str(v))
    if n == "timestamp":
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    if n == "date":
        return v
    if n == "duration":
        months, days, ns = v
        return (int(months), int(days), int(ns))
    if n == "inet":
        a = ipaddress.ip_address(v)
        mapped = getattr(a, "ipv4_mapped", None)
        return str(mapped or a)
    if n == "blob":
        return bytes(v)
    if n == "list":
        return tuple(ch_value(t.params[0], x, json=json or not _is_array(t)) for x in v)
    if n == "set":
        if json or not _is_array(t):
            return tuple(sorted((ch_value(t.params[0], x, json=True) for x in v), key=repr))
        return tuple(ch_value(t.params[0], x) for x in v)  # stored in CQL order
    if n == "map":
        kt, vt = t.params
        items = v.items() if isinstance(v, dict) else [tuple(x) for x in v]  # Array(Tuple(key, value))
        pairs = [(ch_value(kt, k, json=True), ch_value(vt, x, json=True)) for k, x in items]
        return tuple(sorted(pairs, key=lambda p: repr(p[0])))
    if n == "tuple":
        return tuple(ch_value(p, x, json=True) for p, x in zip(t.params, v, strict=True))
    if n == "udt":
        assert t.udt is not None
        fields = zip(t.udt.field_names, t.udt.field_types, v, strict=True)
        out = tuple((name, ch_value(ft, x, json=True)) for name, ft, x in fields)
        if t.is_multicell and all(x is None for _, x in out):
            return None
        return out
    raise AssertionError(f"compare_ch: no comparable form for CQL type {t.cql()}")


def ch_source_snapshot(session: Any, schema: TableSchema, fetch_size: int = 5000) -> Snapshot:
    """Every row of the source table through the driver, in the ClickHouse comparable form."""
    stmt = SimpleStatement(f"SELECT * FROM {schema.keyspace}.{schema.name}", fetch_size=fetch_size)
    snap = Snapshot()
    pk, ck = schema.partition_key, schema.clustering_key
    for row in _dicts(session.execute(stmt)):
        pkey = tuple(src_value(c.type, row[c.name]) for c in pk)
        statics = {c.name: _src(c.type, row[c.name]) for c in schema.static_columns}
        if any(v is not None for v in statics.values()):
            snap.static[pkey] = statics
        if ck and row[ck[0].name] is None:
            continue  # a partition with only static cells
        key = pkey + tuple(src_value(c.type, row[c.name]) for c in ck)
        snap.rows[key] = {c.name: _src(c.type, row[c.name]) for c in schema.regular_columns}
    return snap


def _q(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def ch_snapshot(client: Any, schema: TableSchema, target: str, *, soft: bool = False) -> Snapshot:
    """The ClickHouse replica of ``schema`` at ``target`` ("database.table") with ``FINAL``.
    ``client``: a synchronous clickhouse-connect client."""
    db, _, table = target.partition(".")
    snap = Snapshot()
    for static in (False, True):
        keys = schema.partition_key if static else schema.primary_key
        cols = schema.static_columns if static else schema.regular_columns
        if static and not cols:
            continue
        name = table + ("_static" if static else "")
        names = ", ".join([*(_q(c.name) for c in (*keys, *cols)), _EMPTY])
        where = " WHERE _cdc_deleted = 0" if soft else ""
        res = client.query(
            f"SELECT {names} FROM {_q(db)}.{_q(name)} FINAL{where}",
            query_formats={"String": "bytes", "Tuple": "tuple"},
        )
        out = snap.static if static else snap.rows
        for raw in res.result_rows:
            key = tuple(ch_value(c.type, v) for c, v in zip(keys, raw, strict=False))
            *cells, empty_raw = raw[len(keys) :]
            empty = {e.decode() if isinstance(e, bytes) else e for e in empty_raw}
            values = {}
            for c, cell in zip(cols, cells, strict=True):
                # an empty Array/Map is null unless _cdc_empty names it (a frozen empty value)
                null = c.type.name in _COLLECTIONS and not cell and c.name not in empty
                values[c.name] = None if null else _nested_empty_is_null(c.type, ch_value(c.type, cell))
            if static and all(v is None for v in values.values()):
                continue  # a partition without static cells
            assert key not in out, f"FINAL returned {key} twice in {db}.{name}"
            out[key] = values
    return snap


async def wait_ch_converged(
    session: Any,
    schema: TableSchema,
    client: Any,
    target: str,
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 (a deadline with a diff, not a cancellation)
    alive: Callable[[], None] | None = None,
    soft: bool = False,
) -> Snapshot:
    """Poll until the ClickHouse replica equals the source; AssertionError with the diff."""
    expected = await asyncio.to_thread(ch_source_snapshot, session, schema)
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        try:
            actual: Snapshot | None = await asyncio.to_thread(ch_snapshot, client, schema, target, soft=soft)
        except Exception:
            if time.monotonic() > deadline:
                raise
            actual = None
        if actual is not None and not diff(expected, actual):
            return actual
        if time.monotonic() > deadline:
            expected = await asyncio.to_thread(ch_source_snapshot, session, schema)
            actual = await asyncio.to_thread(ch_snapshot, client, schema, target, soft=soft)
            problems = diff(expected, actual)
            if not problems:
                return actual
            raise AssertionError(
                f"ClickHouse {target} did not converge to the source within {timeout:.0f}s "
                "(diff says PostgreSQL for the replica):\n"
                + "\n".join(problems)
                + "\n"
                + await asyncio.to_thread(_raw_versions, client, schema, target, expected, actual)
            )
        await asyncio.sleep(0.5)


def _raw_versions(client: Any, schema: TableSchema, target: str, expected: Snapshot, actual: Snapshot) -> str:
    """Every stored version (no FINAL) of up to five mismatched rows: what a failure needs."""
    db, _, table = target.partition(".")
    bad = [k for k in expected.rows if expected.rows[k] != actual.rows.get(k)]
    bad += [k for k in actual.rows if k not in expected.rows]
    keys = schema.primary_key
    out = []
    for key in sorted(bad, key=repr)[:5]:
        where = " AND ".join(f"{_q(c.name)} = %(k{i})s" for i, c in enumerate(keys))
        params = {
            f"k{i}": (v.replace(tzinfo=None) if isinstance(v, dt.datetime) else v) for i, v in enumerate(key)
        }
        res = client.query(
            f"SELECT * FROM {_q(db)}.{_q(table)} WHERE {where} ORDER BY _cdc_version", parameters=params
        )
        out.append(f"stored versions of {key}: source={expected.rows.get(key)}")
        out.extend(f"  {dict(zip(res.column_names, r, strict=True))}" for r in res.result_rows)
    return "\n".join(out)

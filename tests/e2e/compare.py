"""Compare a Scylla (emulator) table with its PostgreSQL replica, field by field.

Both sides are normalised, guided by the column's CQL type, into one *comparable* form following
the documented type map (docs/type-map.md), written independently of ``cdcd/sinks/postgres/types.py``:

=================  =============================================================================
CQL type           comparable value (source: driver value; PostgreSQL: asyncpg value / JSON)
=================  =============================================================================
text, ascii        ``str``
int family, varint ``int`` (varint is ``numeric`` in PostgreSQL: must be integral)
decimal            ``str`` ``format(d, "f")`` (scale kept: ``1.10`` stays ``1.10``)
float, double      ``repr(float)`` (``nan``, ``inf``, ``-0.0`` are distinct and comparable)
boolean, uuid      ``bool``, ``uuid.UUID``
timestamp          aware UTC ``datetime``; date ``datetime.date``; time ``int`` ns
duration           ``(months, days, ns)``; in ``interval`` columns ns below 1 µs are dropped
inet, blob         ``str(ipaddress.ip_address(v))``; ``bytes`` (JSON: ``"\\x<hex>"``)
list               ``tuple`` in list order
set                ``tuple`` in CQL order for array columns (uuid: by 128-bit value, documented);
                   sorted by ``repr`` (order-insensitive) inside JSON
map                ``tuple`` of ``(key, value)`` sorted by ``repr(key)`` (JSON keys parsed by type)
tuple, UDT         ``tuple``; UDT ``((field, value), ...)`` in field order
empty collection   ``()``: only frozen ones exist (a non-null empty value); non-frozen are ``None``
=================  =============================================================================

``source_snapshot`` reads a whole table through the driver, ``pg_snapshot`` the replica (main table,
``<table>_static`` side table, soft-deleted rows skipped). ``diff`` renders the first mismatches.
``wait_converged`` polls until equal (or fails with the diff).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from cassandra.query import SimpleStatement

from cdcd.events import timeuuid_sort_key
from cdcd.schema import CqlType, TableSchema

__all__ = [
    "Snapshot",
    "assert_history_once",
    "diff",
    "history_positions",
    "log_delete_positions",
    "pg_connect",
    "pg_snapshot",
    "source_schema",
    "source_snapshot",
    "wait_converged",
]

UTC = dt.UTC
_INTS = {"tinyint", "smallint", "int", "bigint", "counter", "varint"}
_SCALARS = {
    "ascii", "text", "varchar", "tinyint", "smallint", "int", "bigint", "counter", "varint", "decimal",
    "float", "double", "boolean", "uuid", "timeuuid", "timestamp", "date", "time", "duration", "inet", "blob",
}  # fmt: skip


def _is_array(t: CqlType) -> bool:
    return t.name in ("list", "set") and t.params[0].name in _SCALARS


# ---------------------------------------------------------------------------------- source side
def _set_order(t: CqlType) -> Callable[[Any], Any]:
    """CQL order of set elements of scalar type ``t`` (raw driver values)."""
    n = t.name
    if n in ("ascii", "text", "varchar"):
        return lambda v: v.encode()
    if n == "inet":
        return lambda v: ipaddress.ip_address(v).packed
    if n == "uuid":
        return lambda v: v.int  # documented deviation: PostgreSQL arrays order uuids by value
    if n == "timeuuid":
        return timeuuid_sort_key
    if n == "date":
        return lambda v: getattr(v, "days_from_epoch", v)
    if n == "time":
        return lambda v: getattr(v, "nanosecond_time", v)
    return lambda v: v


def src_value(t: CqlType, v: Any, *, json: bool = False) -> Any:
    """Driver value of CQL type ``t`` -> comparable form. ``json``: the value sits inside jsonb."""
    if v is None:
        return None
    n = t.name
    if n in ("ascii", "text", "varchar"):
        return str(v)
    if n in _INTS:
        return int(v)
    if n == "decimal":
        return format(v, "f")
    if n in ("float", "double"):
        return repr(float(v))
    if n == "boolean":
        return bool(v)
    if n in ("uuid", "timeuuid"):
        return uuid.UUID(str(v))
    if n == "timestamp":
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
    if n == "date":
        return v.date() if hasattr(v, "date") and not isinstance(v, dt.date) else v
    if n == "time":
        return int(getattr(v, "nanosecond_time", v))
    if n == "duration":
        ns = int(v.nanoseconds)
        return (int(v.months), int(v.days), ns if json else ns // 1000 * 1000)
    if n == "inet":
        return str(ipaddress.ip_address(v))
    if n == "blob":
        return bytes(v)
    if n == "list":
        return tuple(src_value(t.params[0], x, json=json or not _is_array(t)) for x in v)
    if n == "set":
        inner = json or not _is_array(t)
        if inner:
            return tuple(sorted((src_value(t.params[0], x, json=True) for x in v), key=repr))
        ordered = sorted(v, key=_set_order(t.params[0]))
        return tuple(src_value(t.params[0], x) for x in ordered)
    if n == "map":
        kt, vt = t.params
        pairs = [(src_value(kt, k, json=True), src_value(vt, x, json=True)) for k, x in v.items()]
        return tuple(sorted(pairs, key=lambda p: repr(p[0])))
    if n == "tuple":
        vals = [*v, *([None] * (len(t.params) - len(v)))]
        return tuple(src_value(p, x, json=True) for p, x in zip(t.params, vals, strict=True))
    if n == "udt":
        assert t.udt is not None
        vals = list(v)
        vals += [None] * (len(t.udt.field_names) - len(vals))
        fields = zip(t.udt.field_names, t.udt.field_types, vals, strict=True)
        out = tuple((name, src_value(ft, x, json=True)) for name, ft, x in fields)
        if t.is_multicell and all(x is None for _, x in out):
            return None  # a non-frozen UDT with no field set does not exist in CQL
        return out
    raise AssertionError(f"compare: no comparable form for CQL type {t.cql()}")


# ------------------------------------------------------------------------------ PostgreSQL side
def _json_key(t: CqlType, s: str) -> Any:
    """A jsonb object key (text) of map key type ``t`` -> comparable form."""
    n = t.name
    if n in ("ascii", "text", "varchar"):
        return s
    if n in _INTS or n == "time":
        return int(s)
    if n == "decimal":
        return format(decimal.Decimal(s), "f")
    if n in ("float", "double"):
        return repr(float(s))
    if n == "boolean":
        assert s in ("true", "false"), f"boolean map key {s!r}"
        return s == "true"
    if n in _SCALARS:
        return pg_json(t, s)
    return pg_json(t, json.loads(s, parse_float=decimal.Decimal))


def pg_json(t: CqlType, j: Any) -> Any:
    """A JSON value (decoded with Decimal floats) of CQL type ``t`` -> comparable form."""
    if j is None:
        return None
    n = t.name
    if n in ("ascii", "text", "varchar"):
        return j
    if n in _INTS:
        assert decimal.Decimal(j) == int(j), f"non-integral {j!r} for {n}"
        return int(j)
    if n == "decimal":
        return format(decimal.Decimal(j), "f")
    if n in ("float", "double"):
        return repr(float(j))  # numbers, or "NaN" / "Infinity" / "-Infinity"
    if n == "boolean":
        assert isinstance(j, bool), f"boolean as {j!r}"
        return j
    if n in ("uuid", "timeuuid"):
        return uuid.UUID(j)
    if n == "timestamp":
        return dt.datetime.fromisoformat(j).astimezone(UTC)
    if n == "date":
        return dt.date.fromisoformat(j)
    if n == "time":
        return int(j)
    if n == "duration":
        assert set(j) == {"months", "days", "nanoseconds"}, f"duration as {j!r}"
        return (int(j["months"]), int(j["days"]), int(j["nanoseconds"]))
    if n == "inet":
        return str(ipaddress.ip_address(j))
    if n == "blob":
        assert j.startswith("\\x"), f"blob as {j!r}"
        return bytes.fromhex(j[2:])
    if n == "list":
        return tuple(pg_json(t.params[0], x) for x in j)
    if n == "set":
        return tuple(sorted((pg_json(t.params[0], x) for x in j), key=repr))
    if n == "map":
        kt, vt = t.params
        pairs = [(_json_key(kt, k), pg_json(vt, x)) for k, x in j.items()]
        return tuple(sorted(pairs, key=lambda p: repr(p[0])))
    if n == "tuple":
        assert len(j) == len(t.params), f"tuple of {len(t.params)} as {j!r}"
        return tuple(pg_json(p, x) for p, x in zip(t.params, j, strict=True))
    if n == "udt":
        assert t.udt is not None
        extra = set(j) - set(t.udt.field_names)
        assert not extra, f"UDT {t.udt.name} has unknown fields {sorted(extra)}"
        return tuple(
            (name, pg_json(ft, j.get(name)))
            for name, ft in zip(t.udt.field_names, t.udt.field_types, strict=True)
        )
    raise AssertionError(f"compare: no comparable form for CQL type {t.cql()}")


def pg_value(t: CqlType, v: Any) -> Any:
    """An asyncpg column value of CQL type ``t`` (type map) -> comparable form."""
    if v is None:
        return None
    n = t.name
    if not (n in _SCALARS or _is_array(t)):
        return pg_json(t, json.loads(v, parse_float=decimal.Decimal) if isinstance(v, str) else v)
    if n in ("list", "set"):
        return tuple(pg_value(t.params[0], x) for x in v)
    if n in ("ascii", "text", "varchar", "boolean"):
        return v
    if n in _INTS or n == "time":
        if isinstance(v, decimal.Decimal):
            assert v == v.to_integral_value(), f"non-integral {v} for {n}"
        return int(v)
    if n == "decimal":
        return format(v, "f")
    if n in ("float", "double"):
        return repr(float(v))
    if n in ("uuid", "timeuuid"):
        return uuid.UUID(str(v))
    if n in ("timestamp", "date"):
        return v  # decoded exactly by pg_connect's codecs (or a PgInfinity)
    if n == "duration":
        months, days, micros = v
        return (months, days, micros * 1000)
    if n == "inet":
        return str(getattr(v, "ip", v))  # IPv4Address or IPv4Interface
    if n == "blob":
        return bytes(v)
    raise AssertionError(f"compare: no comparable form for CQL type {t.cql()}")


# ------------------------------------------------------------------------------------ snapshots
@dataclass
class Snapshot:
    """rows: primary key -> {regular column: value}; static: partition key -> {static column: value}."""

    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    static: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)


def source_schema(session: Any, table: str) -> TableSchema:
    ks, _, name = table.partition(".")
    cluster = session.cluster
    cluster.refresh_table_metadata(ks, name)
    ksm = cluster.metadata.keyspaces[ks]
    return TableSchema.from_driver(ksm.tables[name], ksm)


def _dicts(result: Any) -> Iterator[dict[str, Any]]:
    """Rows of a driver ResultSet as dicts, whatever the session's row factory."""
    names = result.column_names
    for row in result:
        yield row if isinstance(row, dict) else dict(zip(names, row, strict=True))


def source_snapshot(session: Any, schema: TableSchema, fetch_size: int = 5000) -> Snapshot:
    """Every row of the source table through the driver (SELECT *), in comparable form."""
    stmt = SimpleStatement(f"SELECT * FROM {schema.keyspace}.{schema.name}", fetch_size=fetch_size)
    snap = Snapshot()
    pk, ck = schema.partition_key, schema.clustering_key
    result = session.execute(stmt)
    for row in _dicts(result):
        pkey = tuple(src_value(c.type, row[c.name]) for c in pk)
        statics = {c.name: src_value(c.type, row[c.name]) for c in schema.static_columns}
        if any(v is not None for v in statics.values()):
            snap.static[pkey] = statics
        if ck and row[ck[0].name] is None:
            continue  # a partition with only static cells: no clustering row
        key = pkey + tuple(src_value(c.type, row[c.name]) for c in ck)
        snap.rows[key] = {c.name: src_value(c.type, row[c.name]) for c in schema.regular_columns}
    return snap


_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_DATE = dt.date(2000, 1, 1)


class PgInfinity(str):
    """PostgreSQL ``infinity`` / ``-infinity`` of a date or timestamp (no CQL value maps to it)."""


def _timestamptz(t: tuple[int]) -> dt.datetime | PgInfinity:
    (us,) = t
    if us in (2**63 - 1, -(2**63)):
        return PgInfinity("infinity" if us > 0 else "-infinity")
    return _PG_EPOCH + dt.timedelta(microseconds=us)


def _date(t: tuple[int]) -> dt.date | PgInfinity:
    (days,) = t
    if days in (2**31 - 1, -(2**31)):
        return PgInfinity("infinity" if days > 0 else "-infinity")
    return _PG_EPOCH_DATE + dt.timedelta(days=days)


def _no_encode(v: Any) -> Any:
    raise TypeError("the comparison connection only reads")


async def pg_connect(dsn: str) -> asyncpg.Connection:
    """An asyncpg connection for reading replicas exactly: ``interval`` as ``(months, days, µs)``;
    ``date``/``timestamptz`` decoded here, so PostgreSQL's ``±infinity`` (which asyncpg returns as
    ``date.min``/``datetime.min``) shows up as a ``PgInfinity`` mismatch instead of a CQL value."""
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec(
        "interval", schema="pg_catalog", encoder=lambda v: v, decoder=lambda v: v, format="tuple"
    )
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_no_encode, decoder=_timestamptz, format="tuple"
    )
    await conn.set_type_codec("date", schema="pg_catalog", encoder=_no_encode, decoder=_date, format="tuple")
    return conn


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _pg_table_exists(conn: asyncpg.Connection, schema: str, table: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{_q(schema)}.{_q(table)}"))


async def pg_snapshot(conn: asyncpg.Connection, schema: TableSchema, target: str) -> Snapshot:
    """The replica of ``schema`` at ``target`` ("schema.table"), in comparable form."""
    tschema, _, ttable = target.partition(".")
    snap = Snapshot()
    for static in (False, True):
        table = ttable + ("_static" if static else "")
        keys = schema.partition_key if static else schema.primary_key
        cols = schema.static_columns if static else schema.regular_columns
        if static and not cols:
            continue
        if not await _pg_table_exists(conn, tschema, table):
            if static:
                continue
            raise AssertionError(f"PostgreSQL table {tschema}.{table} does not exist")
        names = ", ".join(_q(c.name) for c in (*keys, *cols))
        rows = await conn.fetch(f"SELECT {names} FROM {_q(tschema)}.{_q(table)} WHERE NOT _cdc_deleted")
        out = snap.static if static else snap.rows
        for r in rows:
            key = tuple(pg_value(c.type, r[c.name]) for c in keys)
            values = {c.name: pg_value(c.type, r[c.name]) for c in cols}
            if static and all(v is None for v in values.values()):
                continue  # a partition without static cells; same as no static row
            out[key] = values
    return snap


# ----------------------------------------------------------------------------------------- diff
def diff(expected: Snapshot, actual: Snapshot, limit: int = 12) -> list[str]:
    """Human-readable mismatches (source = expected, PostgreSQL = actual); empty when equal."""
    out: list[str] = []
    for label, exp, act in (("row", expected.rows, actual.rows), ("static", expected.static, actual.static)):
        missing = [k for k in exp if k not in act]
        extra = [k for k in act if k not in exp]
        changed = []
        for k in exp.keys() & act.keys():
            cols = [c for c in exp[k] if exp[k][c] != act[k].get(c)]
            if cols:
                changed.append((k, cols))
        if missing:
            out.append(
                f"{label}s missing in PostgreSQL: {len(missing)} of {len(exp)}, e.g. {sorted(missing, key=repr)[:5]}"
            )
        if extra:
            out.append(f"{label}s only in PostgreSQL: {len(extra)}, e.g. {sorted(extra, key=repr)[:5]}")
        if changed:
            out.append(f"{label}s that differ: {len(changed)}")
            for k, cols in sorted(changed, key=repr)[:limit]:
                for c in cols:
                    out.append(f"  {label} {k} .{c}: source={exp[k][c]!r} postgres={act[k].get(c)!r}")
    return out


async def wait_converged(
    session: Any,
    schema: TableSchema,
    pg_dsn: str,
    target: str,
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 (a deadline with a diff, not a cancellation)
    alive: Callable[[], None] | None = None,
) -> Snapshot:
    """Poll until PostgreSQL equals the source table; AssertionError with the diff on timeout.

    ``alive()`` is called each round (e.g. to fail fast when cdcd exited). Returns the snapshot.
    """
    expected = await asyncio.to_thread(source_snapshot, session, schema)
    deadline = time.monotonic() + timeout
    conn = await pg_connect(pg_dsn)
    try:
        while True:
            if alive is not None:
                alive()
            try:
                actual = await pg_snapshot(conn, schema, target)
            except (AssertionError, asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
                if time.monotonic() > deadline:
                    raise
                actual = None
            if actual is not None and not diff(expected, actual):
                return actual
            if time.monotonic() > deadline:
                expected = await asyncio.to_thread(source_snapshot, session, schema)
                actual = await pg_snapshot(conn, schema, target)
                problems = diff(expected, actual)
                if not problems:
                    return actual
                try:
                    history = await explain_rows(session, schema, conn, target, expected, actual)
                except Exception as exc:  # a diagnosis must not hide the failure itself
                    history = [f"(no history of the differing rows: {type(exc).__name__}: {exc})"]
                raise AssertionError(
                    f"PostgreSQL {target} did not converge to the source within {timeout:.0f}s:\n"
                    + "\n".join(problems + history)
                )
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


def _time_us(t: uuid.UUID) -> int:
    return (t.time - 0x01B21DD213814000) // 10


async def explain_rows(  # noqa: PLR0917 (the two snapshots and where they come from)
    session: Any,
    schema: TableSchema,
    conn: asyncpg.Connection,
    target: str,
    expected: Snapshot,
    actual: Snapshot,
    *,
    limit: int = 3,
) -> list[str]:
    """For the first ``limit`` rows that differ (or are missing/extra): every CDC log row of their
    partition (time in µs, batch seq, operation, the differing columns) and the PostgreSQL row's
    version columns, to tell a change cdcd never read from one its version guard skipped."""
    keys = sorted((expected.rows.keys() ^ actual.rows.keys()) | {
        k for k in expected.rows.keys() & actual.rows.keys() if expected.rows[k] != actual.rows[k]
    }, key=repr)[:limit]  # fmt: skip
    if not keys:
        return []
    pk = [c.name for c in schema.partition_key]
    ck = [c.name for c in schema.clustering_key]
    cols = [c.name for c in schema.regular_columns]
    stmt = SimpleStatement(f"SELECT * FROM {schema.keyspace}.{schema.name}_scylla_cdc_log", fetch_size=5000)
    log = await asyncio.to_thread(lambda: list(_dicts(session.execute(stmt))))
    tschema, _, ttable = target.partition(".")
    out = ["history of the differing rows (CDC log of their partition; PostgreSQL version columns):"]
    for key in keys:
        part = key[: len(pk)]
        out.append(f"  row {key}:")
        for r in sorted(log, key=lambda r: (timeuuid_sort_key(r["cdc$time"]), r["cdc$batch_seq_no"])):
            if tuple(r.get(c) for c in pk) != part:
                continue
            rck = tuple(r.get(c) for c in ck)
            if r["cdc$operation"] not in (4, 5, 6) and rck != key[len(pk) :]:
                continue
            vals = {c: r.get(c) for c in cols if r.get(c) is not None or r.get(f"cdc$deleted_{c}")}
            out.append(
                f"    t={_time_us(r['cdc$time'])} seq={r['cdc$batch_seq_no']} op={r['cdc$operation']} "
                f"stream={bytes(r['cdc$stream_id']).hex()[:12]} ck={rck} {vals}"
            )
        where = " AND ".join(f"{_q(c)} = ${i + 1}" for i, c in enumerate([*pk, *ck]))
        try:
            row = await conn.fetchrow(
                f"SELECT _cdc_write_time, _cdc_batch_seq, _cdc_row_marker, _cdc_deleted "
                f"FROM {_q(tschema)}.{_q(ttable)} WHERE {where}",
                *key,
            )
        except (asyncpg.PostgresError, asyncpg.DataError) as exc:
            row = f"({type(exc).__name__}: {exc})"
        out.append(f"    postgres: {dict(row) if isinstance(row, asyncpg.Record) else row}")
    return out


# -------------------------------------------------------------------------------------- history
def log_delete_positions(session: Any, table: str) -> set[tuple[bytes, uuid.UUID, int]]:
    """CDC positions ``(stream_id, time, batch_seq)`` of every row/partition/range delete in the
    source's CDC log (a range delete is its start bound row, ops 5/6)."""
    stmt = SimpleStatement(
        f'SELECT "cdc$stream_id", "cdc$time", "cdc$batch_seq_no", "cdc$operation" '
        f"FROM {table}_scylla_cdc_log",
        fetch_size=5000,
    )
    return {
        (bytes(r["cdc$stream_id"]), r["cdc$time"], r["cdc$batch_seq_no"])
        for r in _dicts(session.execute(stmt))
        if r["cdc$operation"] in (3, 4, 5, 6)
    }


async def assert_history_once(session: Any, table: str, pg_dsn: str, target: str, polls: int = 40) -> int:
    """PostgreSQL's delete history (``<target>_history``) holds every delete of the source's CDC
    log exactly once, and nothing else (polled briefly); returns the number of deletes."""
    expected = log_delete_positions(session, table)
    conn = await pg_connect(pg_dsn)
    try:
        found: list[tuple[bytes, uuid.UUID, int]] = []
        for _ in range(polls):  # the history commits with the main table; poll briefly anyway
            found = await history_positions(conn, target)
            if set(found) >= expected:
                break
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    dupes = [p for p, n in Counter(found).items() if n > 1]
    assert not dupes, f"duplicate history rows: {dupes[:5]}"
    if set(found) != expected:
        missing = sorted(expected - set(found), key=lambda p: timeuuid_sort_key(p[1]))
        tschema, _, _ = target.partition(".")
        conn = await pg_connect(pg_dsn)
        try:  # where the destination says it got to on those streams (the offsets table)
            offsets = {
                bytes(r[0]): (r[1], r[2])
                for r in await conn.fetch(
                    f"SELECT stream_id, position_us, updated_at FROM {_q(tschema)}.cdcd_offsets "
                    "WHERE source_table = $1 AND destination = 'pg'",
                    table,
                )
            }
        except asyncpg.PostgresError:
            offsets = {}
        finally:
            await conn.close()
        lines = [
            f"  stream {s.hex()} t={_time_us(t)} seq={q}; offsets of the stream: {offsets.get(s)}"
            for s, t, q in missing[:8]
        ]
        raise AssertionError(
            f"history: {len(missing)} deletes missing, {len(set(found) - expected)} unexpected; "
            f"first missing (wall time now {time.time():.3f}):\n" + "\n".join(lines)
        )
    return len(expected)


async def history_positions(conn: asyncpg.Connection, target: str) -> list[tuple[bytes, uuid.UUID, int]]:
    """Every ``<target>_history`` row's CDC position (a list: duplicates would show)."""
    tschema, _, ttable = target.partition(".")
    rows = await conn.fetch(
        f"SELECT _cdc_stream_id, _cdc_time, _cdc_batch_seq FROM {_q(tschema)}.{_q(ttable + '_history')}"
    )
    return [(bytes(r[0]), uuid.UUID(str(r[1])), r[2]) for r in rows]

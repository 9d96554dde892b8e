"""Reading a destination table's rows back for ``reconcile``, in a form comparable with the source.

``open_reader(name, config, mapping, schema)`` gives a ``TargetReader``:

* ``rows()``: every row of the main table, page by page (keyset pagination on the primary key);
* ``get(key)``: one row by key, or None; ``get_many(keys)``: the rows of those keys that exist
  (one query per 1000 keys).

Each row is a ``TargetRow``: the canonical key, the values as ``comparable`` makes them, the
row's version (write time of the last change applied, µs) and whether it is soft-deleted (a
soft-deleted row counts as absent, but its version still guards repairs).

``comparable(type, value, kind)``: the one form both sides are compared in. PostgreSQL and
TimescaleDB values are read back to canonical values (``from_pg``); ClickHouse values are compared
in ClickHouse value space (the source's canonical values go through ``to_ch``, the read ones through
``from_read``). Then: empty collections are null (CQL does not tell them apart in non-frozen
columns), sets and maps are ordered by ``repr``, floats are ``repr``s (NaN equals NaN), durations in
PostgreSQL drop nanoseconds below 1 µs (``interval``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from cdcd.schema import Column, CqlType, TableSchema
from cdcd.sinks import TableMapping, config_secret

__all__ = ["TargetReader", "TargetRow", "comparable", "open_reader", "source_form"]

PAGE = 5000


class TargetRow:
    __slots__ = ("deleted", "key", "values", "version")

    def __init__(self, key: dict[str, Any], values: dict[str, Any], version: int, deleted: bool) -> None:
        self.key = key
        self.values = values
        self.version = version
        self.deleted = deleted


class TargetReader(Protocol):
    kind: str

    def rows(self) -> AsyncIterator[list[TargetRow]]: ...

    async def get(self, key: dict[str, Any]) -> TargetRow | None: ...

    async def get_many(self, keys: list[dict[str, Any]]) -> list[TargetRow]: ...

    async def aclose(self) -> None: ...


def _stable(v: Any) -> Any:
    """Order-free, hashable form of a comparable value."""
    if v is None:
        return None
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, decimal.Decimal):
        return format(v, "f")
    if isinstance(v, dict):
        if not v:
            return None
        return ("map", tuple(sorted(((_stable(k), _stable(x)) for k, x in v.items()), key=repr)))
    if isinstance(v, list | tuple):
        if not v and isinstance(v, list):
            return None
        return tuple(_stable(x) for x in v)
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        return v.astimezone(dt.UTC)
    return v


def comparable(t: CqlType, v: Any, kind: str) -> Any:
    """``v`` (canonical for PostgreSQL kinds, ClickHouse value space for ClickHouse) -> the form
    compared (see the module docstring)."""
    if v is None:
        return None
    if t.name == "set" and isinstance(v, list | tuple):
        if not v:
            return None
        return ("set", tuple(sorted((_stable(x) for x in v), key=repr)))
    if t.name == "duration" and kind != "clickhouse":
        months, days, ns = (v.months, v.days, v.nanoseconds) if hasattr(v, "months") else tuple(v)
        return (months, days, ns // 1000 * 1000)
    return _stable(v)


def source_form(schema: TableSchema, kind: str) -> Callable[[str, Any], Any]:
    """canonical source value of column ``name`` -> the destination's comparable form."""
    types = {c.name: c.type for c in schema.columns}
    if kind != "clickhouse":
        return lambda name, v: comparable(types[name], v, kind)
    from cdcd.sinks.clickhouse.types import from_read, to_ch

    conv = {c.name: (to_ch(c.type), from_read(c.type, strings_as_bytes=False)) for c in schema.columns}

    def ch(name: str, v: Any) -> Any:
        if v is None:
            return None
        to, back = conv[name]
        return comparable(types[name], back(to(v)), kind)

    return ch


async def open_reader(name: str, config: Any, mapping: TableMapping, schema: TableSchema) -> TargetReader:
    kind = getattr(config, "kind", "postgres")
    if kind == "clickhouse":
        reader: TargetReader = await _ClickHouseReader.open(config, mapping, schema)
    else:
        reader = await _PostgresReader.open(config, mapping, schema, kind)
    return reader


# ---------------------------------------------------------------------------------- PostgreSQL
class _PostgresReader:
    def __init__(self, pool: Any, mapping: TableMapping, schema: TableSchema, kind: str) -> None:
        from cdcd.sinks.postgres.sql import DELETED, WRITE_TIME, ident, qualified
        from cdcd.sinks.postgres.types import from_pg

        self.kind = kind
        self.conn = pool  # an asyncpg pool: the snapshot's workers read at once
        self.keys: list[Column] = list(schema.primary_key)
        self.cols: list[Column] = [c for c in schema.columns if c.kind == "regular"]
        self.conv = {c.name: from_pg(c.type) for c in schema.columns}
        self.types = {c.name: c.type for c in schema.columns}
        table = qualified(mapping.target_schema, mapping.target_table)
        names = [*(ident(c.name) for c in self.keys), *(ident(c.name) for c in self.cols)]
        select = f"SELECT {', '.join(names)}, {WRITE_TIME}, {DELETED} FROM {table}"
        key = ", ".join(ident(c.name) for c in self.keys)
        params = ", ".join(f"${i + 1}" for i in range(len(self.keys)))
        self.first = f"{select} ORDER BY {key} LIMIT {PAGE}"
        self.next = f"{select} WHERE ({key}) > ({params}) ORDER BY {key} LIMIT {PAGE}"
        where = " AND ".join(f"{ident(c.name)} = ${i + 1}" for i, c in enumerate(self.keys))
        self.one = f"{select} WHERE {where}"
        from cdcd.sinks.postgres.types import is_array, pg_type, to_pg

        self.key_to_pg = [to_pg(c.type) for c in self.keys]
        # keys of scalar types: fetched in bulk with unnest() (others one by one)
        self.bulk = all(pg_type(c.type) != "jsonb" and not is_array(c.type) for c in self.keys)
        arrays = ", ".join(f"${i + 1}::{pg_type(c.type)}[]" for i, c in enumerate(self.keys))
        join = " AND ".join(f"t.{ident(c.name)} = k.{ident(c.name)}" for c in self.keys)
        cols = ", ".join(f"t.{n}" for n in names)
        self.many = (
            f"SELECT {cols}, t.{WRITE_TIME}, t.{DELETED} FROM {table} AS t "
            f"JOIN unnest({arrays}) AS k({key}) ON {join}"
        )

    @classmethod
    async def open(
        cls, config: Any, mapping: TableMapping, schema: TableSchema, kind: str
    ) -> _PostgresReader:
        import asyncpg

        from cdcd.sinks.postgres.table import init_connection

        pool = await asyncpg.create_pool(
            config_secret(config, "dsn"), min_size=1, max_size=4, init=init_connection,
            timeout=float(config.connect_timeout),
        )  # fmt: skip
        return cls(pool, mapping, schema, kind)

    def _row(self, rec: Any) -> TargetRow:
        key = {c.name: self.conv[c.name](rec[c.name]) for c in self.keys}
        values = {c.name: comparable(c.type, self.conv[c.name](rec[c.name]), self.kind) for c in self.cols}
        return TargetRow(key, values, int(rec["_cdc_write_time"]), bool(rec["_cdc_deleted"]))

    async def rows(self) -> AsyncIterator[list[TargetRow]]:
        recs = await self.conn.fetch(self.first)
        while recs:
            yield [self._row(r) for r in recs]
            if len(recs) < PAGE:
                return
            last = recs[-1]
            recs = await self.conn.fetch(self.next, *(last[c.name] for c in self.keys))

    async def get(self, key: dict[str, Any]) -> TargetRow | None:
        args = [conv(key[c.name]) for conv, c in zip(self.key_to_pg, self.keys, strict=True)]
        rec = await self.conn.fetchrow(self.one, *args)
        return None if rec is None else self._row(rec)

    async def get_many(self, keys: list[dict[str, Any]]) -> list[TargetRow]:
        if not self.bulk:
            return [r for r in [await self.get(k) for k in keys] if r is not None]
        out: list[TargetRow] = []
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            cols = [
                [conv(k[c.name]) for k in chunk] for conv, c in zip(self.key_to_pg, self.keys, strict=True)
            ]
            out.extend(self._row(r) for r in await self.conn.fetch(self.many, *cols))
        return out

    async def aclose(self) -> None:
        await self.conn.close()


# ---------------------------------------------------------------------------------- ClickHouse
class _ClickHouseReader:
    kind = "clickhouse"

    def __init__(self, client: Any, mapping: TableMapping, schema: TableSchema) -> None:
        from cdcd.sinks.clickhouse.sql import DELETED, VERSION, ident
        from cdcd.sinks.clickhouse.types import column_type, from_read, to_ch

        self.client = client
        self.keys = list(schema.primary_key)
        self.cols = [c for c in schema.columns if c.kind == "regular"]
        self.read = {c.name: from_read(c.type, strings_as_bytes=False) for c in schema.columns}
        self.key_in = [to_ch(c.type, nullable=False) for c in self.keys]
        self.key_types = [column_type(c.type, True) for c in self.keys]
        table = f"{ident(mapping.target_schema)}.{ident(mapping.target_table)}"
        names = [*(ident(c.name) for c in self.keys), *(ident(c.name) for c in self.cols)]
        self.select = f"SELECT {', '.join(names)}, {VERSION}, {DELETED} FROM {table} FINAL"
        self.order = ", ".join(ident(c.name) for c in self.keys)
        tup = ", ".join(ident(c.name) for c in self.keys)
        self.where_key = f"({tup}) = {{k:Tuple({', '.join(self.key_types)})}}"
        if len(self.keys) == 1:
            self.where_keys = f"{ident(self.keys[0].name)} IN {{keys:Array({self.key_types[0]})}}"
        else:
            self.where_keys = f"({tup}) IN {{keys:Array(Tuple({', '.join(self.key_types)}))}}"
        self.types = {c.name: c.type for c in schema.columns}
        self.canon_key = _ch_key_canonical(self.keys)

    @classmethod
    async def open(cls, config: Any, mapping: TableMapping, schema: TableSchema) -> _ClickHouseReader:
        from urllib.parse import urlsplit

        import clickhouse_connect

        url = urlsplit(str(config.url))
        client = await clickhouse_connect.get_async_client(
            host=url.hostname, port=url.port or (8443 if url.scheme == "https" else 8123),
            username=config.username, password=config_secret(config, "password") or "",
            secure=url.scheme == "https", verify=config.verify_tls, autogenerate_session_id=False,
        )  # fmt: skip
        return cls(client, mapping, schema)

    def _row(self, names: list[str], rec: Any) -> TargetRow:
        d = dict(zip(names, rec, strict=True))
        key = {c.name: self.canon_key[c.name](self.read[c.name](d[c.name])) for c in self.keys}
        values = {c.name: comparable(c.type, self.read[c.name](d[c.name]), self.kind) for c in self.cols}
        return TargetRow(key, values, int(d["_cdc_version"]), bool(d["_cdc_deleted"]))

    async def rows(self) -> AsyncIterator[list[TargetRow]]:
        offset = 0
        while True:
            res = await self.client.query(f"{self.select} ORDER BY {self.order} LIMIT {PAGE} OFFSET {offset}")
            names = list(res.column_names)
            recs = list(res.result_rows)
            if recs:
                yield [self._row(names, r) for r in recs]
            if len(recs) < PAGE:
                return
            offset += PAGE

    async def get(self, key: dict[str, Any]) -> TargetRow | None:
        k = tuple(conv(key[c.name]) for conv, c in zip(self.key_in, self.keys, strict=True))
        res = await self.client.query(f"{self.select} WHERE {self.where_key}", parameters={"k": k})
        recs = list(res.result_rows)
        return self._row(list(res.column_names), recs[0]) if recs else None

    async def get_many(self, keys: list[dict[str, Any]]) -> list[TargetRow]:
        from cdcd.sinks.clickhouse.wire import key_param

        out: list[TargetRow] = []
        for start in range(0, len(keys), 1000):
            chunk = [
                tuple(conv(k[c.name]) for conv, c in zip(self.key_in, self.keys, strict=True))
                for k in keys[start : start + 1000]
            ]
            param = key_param(chunk, self.key_types)
            res = await self.client.query(
                f"{self.select} WHERE {self.where_keys}", parameters={"keys": param}
            )
            names = list(res.column_names)
            out.extend(self._row(names, r) for r in res.result_rows)
        return out

    async def aclose(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result


def _ch_key_canonical(keys: list[Column]) -> dict[str, Callable[[Any], Any]]:
    """ClickHouse key values -> canonical key values (for tokens and source look-ups)."""
    out: dict[str, Callable[[Any], Any]] = {}
    for c in keys:
        n = c.type.name
        if n == "inet":
            out[c.name] = _inet_canonical
        elif n == "timestamp":
            out[c.name] = lambda v: v if v is None else v.replace(microsecond=v.microsecond // 1000 * 1000)
        else:
            out[c.name] = lambda v: v
    return out


def _inet_canonical(v: Any) -> Any:
    import ipaddress

    a = ipaddress.ip_address(v)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)

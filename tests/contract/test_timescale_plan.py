"""Pure unit tests of the TimescaleDB set-up plan and the SQL of the TSL-only paths (compression and
retention cannot run on this machine's Apache-only TimescaleDB build)."""

from __future__ import annotations

from typing import Any

import pytest

from cdcd.config import Duration, HypertableConfig
from cdcd.errors import ConfigError, SchemaMismatch
from cdcd.schema import CdcOptions, Column, TableSchema, parse_cql_type
from cdcd.sinks import TableMapping
from cdcd.sinks.timescale import Features, compression_sql, plan_hypertable

DAY = 86400.0
M = TableMapping(source="ks.m", target_schema="dst", target_table="m")


def schema(cols: list[tuple[str, str, str]], order: tuple[str, ...]) -> TableSchema:
    pos = {"partition_key": 0, "clustering": 0}
    out = []
    for name, typ, kind in cols:
        out.append(Column(name, parse_cql_type(typ), kind, pos.get(kind, 0)))  # type: ignore[arg-type]
        if kind in pos:
            pos[kind] += 1
    return TableSchema(keyspace="ks", name="m", columns=tuple(out), clustering_order=order,  # type: ignore[arg-type]
                       cdc=CdcOptions(enabled=True))  # fmt: skip


def cfg(column: str, chunk: float = DAY, **kw: Any) -> HypertableConfig:
    return HypertableConfig(time_column=column, chunk_interval=Duration(chunk), **kw)


def test_time_column_in_clustering_key() -> None:
    sch = schema(
        [("tenant", "text", "partition_key"), ("dev'ice", "int", "partition_key"),
         ("ts", "timestamp", "clustering"), ("seq", "int", "clustering"), ("v", "double", "regular")],
        ("desc", "asc"),
    )  # fmt: skip
    plan = plan_hypertable("ts", M, sch, cfg("ts", 1.5 * DAY, compress_after=Duration(30 * DAY)))
    assert plan.relation == '"dst"."m"'
    assert plan.chunk_interval == (0, 1, 43_200_000_000)
    assert plan.compress_after == (0, 30, 0)
    assert plan.retention is None
    assert plan.segment_by == ("tenant", "dev'ice")
    assert plan.order_by == (("ts", "DESC"), ("seq", "ASC"))
    assert compression_sql(plan) == (
        'ALTER TABLE "dst"."m" SET (timescaledb.compress, '
        """timescaledb.compress_segmentby = '"tenant", "dev''ice"', """
        """timescaledb.compress_orderby = '"ts" DESC, "seq" ASC')"""
    )


def test_time_column_as_the_only_partition_key() -> None:
    sch = schema([("day", "date", "partition_key"), ("v", "int", "regular")], ())
    plan = plan_hypertable("ts", M, sch, cfg("day", 7 * DAY, retention=Duration(365 * DAY)))
    assert plan.chunk_interval == (0, 7, 0)
    assert plan.retention == (0, 365, 0)
    assert plan.segment_by == ()
    assert plan.order_by == (("day", "DESC"),)
    assert compression_sql(plan) == (
        """ALTER TABLE "dst"."m" SET (timescaledb.compress, timescaledb.compress_orderby = '"day" DESC')"""
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("chunk_interval", 0.0, r"chunk_interval must be positive"),
        ("chunk_interval", DAY + 1, r"chunk_interval must be a whole number of days for a date time column"),
        ("compress_after", 3600.0, r"compress_after must be a whole number of days"),
        ("retention", 1.5 * DAY, r"retention must be a whole number of days"),
    ],
)
def test_bad_intervals_name_the_key(option: str, value: float, message: str) -> None:
    sch = schema([("day", "date", "partition_key"), ("v", "int", "regular")], ())
    kw: dict[str, Any] = {"chunk_interval": Duration(DAY)} | {option: Duration(value)}
    with pytest.raises(ConfigError, match=message) as exc:
        plan_hypertable("ts", M, sch, HypertableConfig(time_column="day", **kw))
    assert exc.value.key == f'destinations.ts.hypertables."ks.m".{option}'


def test_refusal_names_table_column_and_primary_key() -> None:
    sch = schema(
        [("a", "int", "partition_key"), ("b", "int", "clustering"), ("at", "timestamp", "regular")], ("asc",)
    )
    with pytest.raises(SchemaMismatch) as exc:
        plan_hypertable("ts", M, sch, cfg("at"))
    assert str(exc.value).startswith(
        "destination 'ts': hypertable dst.m (source ks.m): time column 'at' is not part of the primary key (a, b)"
    )


def test_features() -> None:
    assert Features(version="2.19.3", license="apache").version_tuple == (2, 19, 3)
    assert not Features(version="2.19.3", license="apache").tsl
    tsl = Features(version="2.23.0-dev", license="timescale")
    assert tsl.tsl and tsl.version_tuple == (2, 23, 0)

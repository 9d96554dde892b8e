"""postgres/sql.py identifiers and statement shapes, and classify (pure; no PostgreSQL)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from cdcd.errors import ConfigError, SchemaMismatch
from cdcd.schema import Column, TableSchema, parse_cql_type
from cdcd.sinks import create_sink, sink_types
from cdcd.sinks.classify import Action, classify
from cdcd.sinks.postgres.sql import ident, layouts_for, lexicographic, qualified, table_ddl, upsert_sql


def schema(*names: str) -> TableSchema:
    cols = [Column("pk", parse_cql_type("int"), "partition_key")]
    cols += [Column(n, parse_cql_type("list<int>"), "regular") for n in names]
    return TableSchema(keyspace="ks", name="t", columns=tuple(cols))


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("t", '"t"'),
        ("Mixed Case", '"Mixed Case"'),
        ('x"; DROP TABLE y; --', '"x""; DROP TABLE y; --"'),
        ("ünïcode", '"ünïcode"'),
        ("a" * 63, '"' + "a" * 63 + '"'),
    ],
)
def test_identifiers_are_quoted(name: str, quoted: str) -> None:
    assert ident(name) == quoted


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", r"1\.\.63 bytes"),
        ("a" * 64, r"1\.\.63 bytes"),
        ("é" * 32, r"1\.\.63 bytes"),  # 64 bytes in UTF-8: PostgreSQL would truncate it silently
        ("a\x00b", "control characters"),
        ("new\nline", "control characters"),
    ],
)
def test_unreasonable_identifiers_are_refused(name: str, why: str) -> None:
    with pytest.raises(SchemaMismatch, match=why):
        ident(name)


def test_source_columns_cannot_clash_with_cdcd_columns() -> None:
    for clash in ("_cdc_write_time", "_cdc_deleted", "_cdcd_seg"):
        with pytest.raises(SchemaMismatch, match="clash"):
            layouts_for(schema("v", clash), "s", "t")
    with pytest.raises(SchemaMismatch, match="clash"):  # a list's companion column
        layouts_for(schema("l", "_cdc_keys_l"), "s", "t")
    with pytest.raises(SchemaMismatch, match=r"1\.\.63"):
        layouts_for(schema("v"), "s" * 64, "t")
    with pytest.raises(SchemaMismatch, match=r"1\.\.63"):
        layouts_for(schema("v", "w" * 60), "s", "t")  # its companion _cdc_keys_www... is too long


def test_statements_quote_every_identifier() -> None:
    main, _ = layouts_for(schema('we"ird'), 'sch"ema', "ta ble")
    ddl = table_ddl(main)
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "sch""ema"."ta ble" (')
    assert '"we""ird" integer[]' in ddl and '"_cdc_keys_we""ird" uuid[]' in ddl
    sql = upsert_sql(main, frozenset({'we"ird'}), replace=False, soft=False)
    assert '"we""ird" = excluded."we""ird"' in sql
    assert (
        "(t._cdc_write_time, t._cdc_batch_seq) < (excluded._cdc_write_time, excluded._cdc_batch_seq)" in sql
    )
    assert qualified("a", "b") == '"a"."b"'


def test_lexicographic_bounds_follow_clustering_order() -> None:
    # (c1 ASC, c2 DESC) >= (1, 5) in clustering order: c1 > 1, or c1 = 1 and c2 <= 5.
    sql = lexicographic(["c1", "c2"], ["asc", "desc"], 3, inclusive=True, lower=True)
    assert sql == '(("c1" > $3) OR ("c1" = $3 AND "c2" <= $4))'
    sql = lexicographic(["c1"], ["desc"], 1, inclusive=False, lower=False)
    assert sql == '(("c1" > $1))'
    assert lexicographic([], [], 1, inclusive=True, lower=True) == "TRUE"


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (asyncpg.exceptions.SerializationError("x"), Action.RETRY),
        (asyncpg.exceptions.DeadlockDetectedError("x"), Action.RETRY),
        (asyncpg.exceptions.CannotConnectNowError("x"), Action.RETRY),
        (asyncpg.exceptions.AdminShutdownError("x"), Action.RETRY),
        (asyncpg.exceptions.TooManyConnectionsError("x"), Action.RETRY),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), Action.RETRY),
        (asyncpg.exceptions.ConnectionDoesNotExistError("x"), Action.RETRY),
        (asyncpg.exceptions.CharacterNotInRepertoireError("NUL"), Action.BAD_DATA),
        (asyncpg.exceptions.NumericValueOutOfRangeError("x"), Action.BAD_DATA),
        (asyncpg.exceptions.UniqueViolationError("x"), Action.BAD_DATA),
        (asyncpg.exceptions.UndefinedColumnError("x"), Action.FATAL),
        (ConnectionRefusedError(), Action.RETRY),
        (TimeoutError(), Action.RETRY),
        (asyncpg.InterfaceError("x"), Action.RETRY),
        (OverflowError("x"), Action.BAD_DATA),
        (RuntimeError("bug"), Action.FATAL),
    ],
)
def test_classify(exc: BaseException, action: Action) -> None:
    assert classify(exc) is action


def test_classify_never_swallows_cancellation() -> None:
    with pytest.raises(asyncio.CancelledError):
        classify(asyncio.CancelledError())


def test_registry_names_the_known_types_and_refuses_others() -> None:
    assert {"postgres", "timescaledb", "clickhouse"} <= set(sink_types())

    class Dest:
        type = "oracle"

    with pytest.raises(ConfigError, match=r"destinations\.dw\.type: unknown destination type 'oracle'"):
        create_sink("dw", Dest())


def test_importing_the_protocol_imports_no_client_library() -> None:
    code = "import cdcd.sinks, sys; print(sorted({'asyncpg', 'clickhouse_connect'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

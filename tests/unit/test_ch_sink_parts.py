"""Pure parts of the ClickHouse sink: error classification, batch dedup tokens, key parameters,
the row cache's LRU, and the SQL it generates."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from clickhouse_connect.driver import exceptions as ch_exc

from cdcd.events import ChangeEvent, Op, Position
from cdcd.schema import CdcOptions, Column, TableSchema, parse_cql_type
from cdcd.sinks import TableMapping
from cdcd.sinks.clickhouse.cache import RowCache
from cdcd.sinks.clickhouse.classify import Action, classify, error_code
from cdcd.sinks.clickhouse.sql import layouts_for, read_sql, table_ddl
from cdcd.sinks.clickhouse.wire import batch_token as _batch_token
from cdcd.sinks.clickhouse.wire import key_param as _param


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (ch_exc.OperationalError("connection refused"), Action.RETRY),
        (OSError("reset"), Action.RETRY),
        (TimeoutError(), Action.RETRY),
        (ch_exc.DatabaseError("HTTP driver received HTTP status 503, server response: busy"), Action.RETRY),
        (ch_exc.DatabaseError("Code: 202. DB::Exception: Too many simultaneous queries"), Action.RETRY),
        (ch_exc.DatabaseError("Code: 241. DB::Exception: Memory limit exceeded"), Action.RETRY),
        (ch_exc.DatabaseError("Code: 117. DB::Exception: Incorrect data"), Action.BAD_DATA),
        (ch_exc.DatabaseError("Code: 469. DB::Exception: Constraint violated"), Action.BAD_DATA),
        (ch_exc.DataError("cannot serialize"), Action.BAD_DATA),
        (OverflowError("int too big"), Action.BAD_DATA),
        (ch_exc.DatabaseError("Code: 60. DB::Exception: Unknown table"), Action.FATAL),
        (ch_exc.DatabaseError("Code: 62. DB::Exception: Syntax error"), Action.FATAL),
        (RuntimeError("bug"), Action.FATAL),
    ],
)
def test_classify(exc: BaseException, action: Action) -> None:
    assert classify(exc) is action


def test_error_code_is_parsed_from_the_message() -> None:
    assert error_code(ch_exc.DatabaseError("... Code: 117. DB::Exception ...")) == 117
    assert error_code(ValueError("no code")) is None


def _ev(stream: bytes, wt: int, seq: int = 0) -> ChangeEvent:
    t = uuid.UUID(int=(wt << 64) | 0x8000000000000000)
    return ChangeEvent(table="ks.t", pos=Position(generation=0, stream_id=stream, time=t), batch_seq=seq,
                       op=Op.INSERT, write_time_us=wt, key={"pk": 1})  # fmt: skip


def test_batch_token_is_a_deterministic_function_of_positions() -> None:
    m = TableMapping(source="ks.t", target_schema="db", target_table="t")
    a = [_ev(b"\x01" * 16, 10), _ev(b"\x01" * 16, 20)]
    same = [_ev(b"\x01" * 16, 10), _ev(b"\x01" * 16, 20)]
    assert _batch_token(m, a) == _batch_token(m, same)
    assert _batch_token(m, a) != _batch_token(m, a[:1])  # a retried subset is another batch
    assert _batch_token(m, a) != _batch_token(m, [a[0], _ev(b"\x01" * 16, 20, seq=1)])
    assert _batch_token(m, a) != _batch_token(
        TableMapping(source="ks.t", target_schema="db", target_table="u"), a
    )


def test_key_parameters() -> None:
    assert str(_param([(1,), (-2,)], ["Int32"])) == "[1,-2]"
    assert str(_param([(1, "it's \\ `x`\t\n")], ["Int32", "String"])) == "[(1,'it\\'s \\\\ \\`x\\`\\\t\\\n')]"
    u = uuid.UUID(int=1)
    assert str(_param([(u,)], ["UUID"])) == f"['{u}']"
    assert _param([(b"\x00",)], ["String"]) == [b"\x00"]  # anything else: clickhouse-connect formats it


def test_row_cache_is_an_lru() -> None:
    c = RowCache(2)
    c.put(False, 1, {"a": 1})
    c.put(False, 2, {"a": 2})
    assert c.get(False, 1) == {"a": 1}  # 1 is now the most recent
    c.put(True, 1, {"a": 3})  # static rows are other entries
    assert c.get(False, 2) is None and c.get(False, 1) == {"a": 1} and c.get(True, 1) == {"a": 3}
    assert (c.hits, c.misses, len(c)) == (3, 1, 2)
    c.clear()
    assert len(c) == 0
    with pytest.raises(ValueError, match="positive"):
        RowCache(0)


def _schema(cols: list[tuple[str, str, str]]) -> TableSchema:
    pos = {"partition_key": 0, "clustering": 0}
    out = []
    for name, typ, kind in cols:
        out.append(Column(name, parse_cql_type(typ), kind, pos.get(kind, 0)))  # type: ignore[arg-type]
        if kind in pos:
            pos[kind] += 1
    order: Any = tuple("asc" for c in out if c.kind == "clustering")
    return TableSchema(
        keyspace="ks", name="t", columns=tuple(out), clustering_order=order, cdc=CdcOptions(enabled=True)
    )


def test_generated_sql() -> None:
    sch = _schema([("pk", "int", "partition_key"), ("ck", "text", "clustering"), ("st", "int", "static"),
                   ("l", "list<int>", "regular")])  # fmt: skip
    main, static = layouts_for(sch, "db", "t")
    assert static is not None and static.table == "t_static"
    ddl = table_ddl(main)
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `db`.`t` (`pk` Int32, `ck` String, `l` Array(Int32), ")
    assert "`_cdc_keys_l` Array(UUID)" in ddl
    assert ddl.endswith(
        "ENGINE = ReplacingMergeTree(_cdc_version, _cdc_is_deleted) ORDER BY (`pk`, `ck`) "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    sql = read_sql(main, by_key=True, by_partition=True)
    assert "WHERE (`pk`, `ck`) IN {keys:Array(Tuple(Int32, String))} OR `pk` IN {parts:Array(Int32)}" in sql
    assert sql.endswith("LIMIT 1 BY `pk`, `ck`")

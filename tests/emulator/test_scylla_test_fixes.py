"""Emulator behaviours that ScyllaDB's own CDC tests (test/cqlpy/test_cdc.py, test/cql/cdc_*.cql, run by
tests/scylla_suite/run.py) showed to differ from Scylla; each checked against scylladb ``f4a4091ca28e``."""

from __future__ import annotations

import pytest

from tests.emulator.test_engine_helpers import new_engine, rows, run
from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cql.lexer import tokenize

LOG = "t_scylla_cdc_log"


def props(e: object, table: str) -> dict[str, object]:
    got = rows(e, "SELECT * FROM system_schema.tables WHERE keyspace_name = 'ks' AND table_name = ?", table)  # type: ignore[arg-type]
    assert len(got) == 1
    return got[0]


def test_map_literal_without_space_after_colon() -> None:
    """Scylla's grammar has no named-bind token (``':' ident``): ``{'enabled':true}`` is a map."""
    assert [(t.kind, t.value) for t in tokenize("{'enabled':true}")[:-1]] == [
        ("sym", "{"), ("string", "enabled"), ("sym", ":"), ("ident", "true"), ("sym", "}"),
    ]  # fmt: skip
    assert [(t.kind, t.value) for t in tokenize("{1:x, 'a' :b}")[:-1]][2:4] == [("sym", ":"), ("ident", "x")]
    # a named bind marker after '=' / '(' / ',' / IN stays one
    assert [t.kind for t in tokenize("WHERE pk = :pk AND ck IN :cks")][3] == "named_bind"
    assert [t.kind for t in tokenize("WHERE pk = :pk AND ck IN :cks")][-2] == "named_bind"
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled':true,'preimage':true}")
    assert rows(e, "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'ks'")[0]


def test_inactive_log_table_columns_answer_scyllas_long_errors() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
    run(e, "ALTER TABLE t WITH cdc = {'enabled': false}")
    for stmt in (
        f"ALTER TABLE {LOG} ADD c int",
        f"ALTER TABLE {LOG} DROP v",
        f"ALTER TABLE {LOG} ALTER v TYPE float",
    ):
        with pytest.raises(CqlError) as err:
            run(e, stmt)
        assert err.value.message == (
            "You cannot modify the set of columns of a CDC log table directly. Although the base table has "
            "deactivated CDC, this table will continue being a CDC log table until it is dropped. If you want to "
            "modify the columns in it, you can only do that by reenabling CDC on the base table, which will "
            "reattach this log table. Then you will be able to modify the columns in the base table, and that "
            "will have effect on the log table too. Modifying the columns of a CDC log table directly is never "
            "allowed."
        )
    with pytest.raises(CqlError) as err:
        run(e, f"ALTER TABLE {LOG} RENAME pk TO p2")
    assert err.value.message == (
        "You cannot rename a column of a CDC log table. Although the base table has deactivated CDC, this table "
        "will continue being a CDC log table until it is dropped."
    )
    run(e, "ALTER TABLE t WITH cdc = {'enabled': true}")  # attached again: the short texts
    with pytest.raises(CqlError, match=r"^Cannot rename a column of a CDC log table\.$"):
        run(e, f"ALTER TABLE {LOG} RENAME pk TO p2")


def test_counter_column_in_non_counter_table_is_a_configuration_error() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int)")
    with pytest.raises(
        CqlError, match=r"^Cannot add a counter column \(c1\) in a non counter column family$"
    ) as err:
        run(e, "ALTER TABLE t ADD c1 counter")
    assert err.value.code == ErrorCode.CONFIG_ERROR


def test_log_table_keeps_its_properties_across_base_alter_and_reattach() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
    run(
        e,
        f"ALTER TABLE {LOG} WITH gc_grace_seconds = 1234 AND default_time_to_live = 99 AND comment = 'mine' "
        "AND compaction = {'class': 'LeveledCompactionStrategy'} AND bloom_filter_fp_chance = 0.2",
    )

    def mine() -> None:
        p = props(e, LOG)
        assert (p["gc_grace_seconds"], p["default_time_to_live"], p["comment"]) == (1234, 99, "mine")
        assert (
            p["compaction"] == {"class": "LeveledCompactionStrategy"} and p["bloom_filter_fp_chance"] == 0.2
        )

    mine()
    run(e, "ALTER TABLE t ADD w text")  # the log is rebuilt with the new column ...
    assert "w" in {
        r["column_name"]
        for r in rows(
            e,
            f"SELECT column_name FROM system_schema.columns WHERE keyspace_name = 'ks' AND table_name = '{LOG}'",
        )
    }
    mine()  # ... keeping its properties
    run(e, "ALTER TABLE t WITH cdc = {'enabled': true, 'ttl': 600}")
    mine()
    run(e, "ALTER TABLE t WITH cdc = {'enabled': false}")
    run(e, "ALTER TABLE t WITH cdc = {'enabled': true}")
    mine()


def test_altered_table_options_are_stored_and_shown() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int)")
    p = props(e, "t")
    assert (p["bloom_filter_fp_chance"], p["min_index_interval"], p["max_index_interval"]) == (
        0.01,
        128,
        2048,
    )
    assert p["memtable_flush_period_in_ms"] == 0
    run(
        e,
        "ALTER TABLE t WITH bloom_filter_fp_chance = 0.05 AND min_index_interval = 64 "
        "AND max_index_interval = 4096 AND memtable_flush_period_in_ms = 120000",
    )
    p = props(e, "t")
    assert (p["bloom_filter_fp_chance"], p["min_index_interval"], p["max_index_interval"]) == (0.05, 64, 4096)
    assert p["memtable_flush_period_in_ms"] == 120000
    for stmt, msg, code in (
        ("ALTER TABLE t WITH min_index_interval = 0", "min_index_interval must be greater than 0", ErrorCode.CONFIG_ERROR),
        ("ALTER TABLE t WITH max_index_interval = 1", "max_index_interval must be greater than min_index_interval", ErrorCode.CONFIG_ERROR),
        ("ALTER TABLE t WITH bloom_filter_fp_chance = 2", "bloom_filter_fp_chance must be larger than 0", ErrorCode.CONFIG_ERROR),
        ("ALTER TABLE t WITH memtable_flush_period_in_ms = 5", "memtable_flush_period_in_ms must be 0 or greater than 60000", ErrorCode.CONFIG_ERROR),
        ("ALTER TABLE t WITH min_index_interval = 'x'", "Invalid integer value x for 'min_index_interval'", ErrorCode.SYNTAX_ERROR),
    ):  # fmt: skip
        with pytest.raises(CqlError, match=msg) as err:
            run(e, stmt)
        assert err.value.code == code

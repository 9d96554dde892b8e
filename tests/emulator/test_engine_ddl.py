"""DDL, catalog and system tables of the emulator engine (driven directly, no protocol)."""

from __future__ import annotations

import pytest

from tests.scylla_emulator.api import CqlError, ErrorCode, SchemaChangeResult, VoidResult
from tests.scylla_emulator.cdc import cdc_extension_blob
from tests.scylla_emulator.model import CdcTableOptions

from .test_engine_helpers import new_engine, rows, run


def test_create_table_reports_schema_change_and_bumps_version() -> None:
    e = new_engine()
    v1 = rows(e, "SELECT schema_version FROM system.local WHERE key = 'local'")[0]["schema_version"]
    res = run(e, "CREATE TABLE t (pk int PRIMARY KEY, v text)")
    assert res == SchemaChangeResult("CREATED", "TABLE", "ks", "t")
    v2 = rows(e, "SELECT schema_version FROM system.local WHERE key = 'local'")[0]["schema_version"]
    assert v1 != v2
    assert isinstance(run(e, "CREATE TABLE IF NOT EXISTS t (pk int PRIMARY KEY)"), VoidResult)
    with pytest.raises(CqlError) as ei:
        run(e, "CREATE TABLE t (pk int PRIMARY KEY)")
    assert ei.value.code == ErrorCode.ALREADY_EXISTS


def test_system_schema_describes_columns_kinds_and_clustering_order() -> None:
    e = new_engine()
    run(e, "CREATE TYPE ut (a int, b text)")
    run(
        e,
        "CREATE TABLE t (p1 int, p2 text, c1 timeuuid, c2 int, s int static, v frozen<ut>, m map<int, text>, "
        "PRIMARY KEY ((p1, p2), c1, c2)) WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC) AND comment = 'hi'",
    )
    cols = {
        r["column_name"]: r
        for r in rows(
            e, "SELECT * FROM system_schema.columns WHERE keyspace_name = 'ks' AND table_name = 't'"
        )
    }
    assert (cols["p2"]["kind"], cols["p2"]["position"]) == ("partition_key", 1)
    assert (cols["c1"]["kind"], cols["c1"]["clustering_order"], cols["c1"]["type"]) == (
        "clustering",
        "desc",
        "timeuuid",
    )
    assert (cols["s"]["kind"], cols["s"]["position"]) == ("static", -1)
    assert cols["v"]["type"] == "frozen<ut>"
    assert cols["m"]["type"] == "map<int, text>"
    t = rows(e, "SELECT comment, flags, extensions FROM system_schema.tables WHERE keyspace_name = 'ks'")
    assert t == [{"comment": "hi", "flags": ["compound"], "extensions": {}}]
    types = rows(e, "SELECT * FROM system_schema.types WHERE keyspace_name = 'ks'")
    assert types == [
        {"keyspace_name": "ks", "type_name": "ut", "field_names": ["a", "b"], "field_types": ["int", "text"]}
    ]


def test_cdc_table_creates_log_and_extension() -> None:
    e = new_engine()
    run(
        e,
        "CREATE TABLE t (pk int, ck int, v int, PRIMARY KEY (pk, ck)) "
        "WITH cdc = {'enabled': true, 'ttl': 600}",
    )
    assert e.take_schema_events() == [SchemaChangeResult("CREATED", "TABLE", "ks", "t_scylla_cdc_log")]
    tables = rows(e, "SELECT table_name, extensions FROM system_schema.tables WHERE keyspace_name = 'ks'")
    ext = {r["table_name"]: r["extensions"] for r in tables}
    assert ext["t"] == {"cdc": cdc_extension_blob(CdcTableOptions(enabled=True, ttl=600))}
    assert "t_scylla_cdc_log" in ext
    cols = rows(
        e,
        "SELECT column_name, kind FROM system_schema.columns WHERE keyspace_name = 'ks' "
        "AND table_name = 't_scylla_cdc_log'",
    )
    kinds = {r["column_name"]: r["kind"] for r in cols}
    assert kinds["cdc$stream_id"] == "partition_key"
    assert kinds["cdc$time"] == kinds["cdc$batch_seq_no"] == "clustering"
    assert kinds["cdc$deleted_v"] == "regular"


def test_alter_mirrors_into_log_and_log_columns_are_protected() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int, u int) WITH cdc = {'enabled': true}")
    run(e, "ALTER TABLE t ADD w text")
    run(e, "ALTER TABLE t DROP u")
    names = {
        r["column_name"]
        for r in rows(
            e,
            "SELECT column_name FROM system_schema.columns WHERE "
            "keyspace_name = 'ks' AND table_name = 't_scylla_cdc_log'",
        )
    }
    assert {"w", "cdc$deleted_w"} <= names
    assert not {"u", "cdc$deleted_u"} & names
    for stmt in (
        "ALTER TABLE t_scylla_cdc_log ADD c int",
        "ALTER TABLE t_scylla_cdc_log DROP v",
        'ALTER TABLE t_scylla_cdc_log DROP "cdc$stream_id"',
        "ALTER TABLE t_scylla_cdc_log ALTER v TYPE float",
    ):
        with pytest.raises(
            CqlError,
            match=r"You cannot modify the set of columns of a CDC log table directly\. "
            "Modify the base table instead.",
        ):
            run(e, stmt)
    with pytest.raises(CqlError, match=r"Cannot rename a column of a CDC log table\."):
        run(e, "ALTER TABLE t_scylla_cdc_log RENAME pk TO pk2")


def test_cdc_errors_counter_taken_name_and_bad_option() -> None:
    e = new_engine()
    with pytest.raises(
        CqlError, match=r"Cannot create CDC log for table ks.c. Counter support not implemented"
    ):
        run(e, "CREATE TABLE c (pk int PRIMARY KEY, n counter) WITH cdc = {'enabled': true}")
    run(e, "CREATE TABLE x_scylla_cdc_log (pk int PRIMARY KEY)")
    with pytest.raises(CqlError, match=r"ks\.x_scylla_cdc_log already exists"):
        run(e, "CREATE TABLE x (pk int PRIMARY KEY) WITH cdc = {'enabled': true}")
    with pytest.raises(CqlError, match="Invalid CDC option: bogus"):
        run(e, "CREATE TABLE y (pk int PRIMARY KEY) WITH cdc = {'enabled': true, 'bogus': 1}")


def test_disable_cdc_keeps_log_and_reenable_reattaches() -> None:
    e = new_engine()
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
    run(e, "INSERT INTO t (pk, v) VALUES (1, 1)")
    run(e, "ALTER TABLE t WITH cdc = {'enabled': false}")
    run(e, "INSERT INTO t (pk, v) VALUES (2, 2)")
    assert len(rows(e, "SELECT * FROM t_scylla_cdc_log")) == 1
    run(e, "ALTER TABLE t WITH cdc = {'enabled': true}")
    run(e, "INSERT INTO t (pk, v) VALUES (3, 3)")
    assert sorted(r["pk"] for r in rows(e, "SELECT pk FROM t_scylla_cdc_log")) == [1, 3]


def test_drop_table_drops_log_and_drop_type_in_use_fails() -> None:
    e = new_engine()
    run(e, "CREATE TYPE ut (a int)")
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v frozen<ut>) WITH cdc = {'enabled': true}")
    with pytest.raises(CqlError, match=r"Cannot drop user type ks\.ut as it is still used by table ks\.t"):
        run(e, "DROP TYPE ut")
    run(e, "DROP TABLE t")
    with pytest.raises(CqlError, match="unconfigured table t_scylla_cdc_log"):
        run(e, "SELECT * FROM t_scylla_cdc_log")
    run(e, "DROP TYPE ut")
    run(e, "DROP KEYSPACE ks")
    assert all(
        r["keyspace_name"] != "ks" for r in rows(e, "SELECT keyspace_name FROM system_schema.keyspaces")
    )


def test_alter_type_add_field_reshapes_values() -> None:
    e = new_engine()
    run(e, "CREATE TYPE ut (a int)")
    run(e, "CREATE TABLE t (pk int PRIMARY KEY, v frozen<ut>, w ut)")
    run(e, "INSERT INTO t (pk, v, w) VALUES (1, {a: 1}, {a: 2})")
    run(e, "ALTER TYPE ut ADD b text")
    run(e, "UPDATE t SET w.b = 'x' WHERE pk = 1")
    r = rows(e, "SELECT v, w FROM t")[0]
    assert tuple(r["v"]) == (1, None)
    assert tuple(r["w"]) == (2, "x")


def test_system_tables_the_driver_reads() -> None:
    e = new_engine()
    local = rows(
        e,
        "SELECT broadcast_address, cluster_name, data_center, host_id, listen_address, partitioner, "
        "rack, release_version, rpc_address, schema_version, tokens FROM system.local WHERE key='local' "
        "USING TIMEOUT 2000ms",
    )[0]
    assert local["partitioner"] == "org.apache.cassandra.dht.Murmur3Partitioner"
    assert local["release_version"] == "3.0.8"
    assert local["rpc_address"] == "127.0.0.1" and local["host_id"] is not None and local["data_center"]
    assert sorted(int(t) for t in local["tokens"]) == sorted(e.generations.node_tokens())
    assert rows(e, "SELECT * FROM system.peers") == []
    assert rows(e, "SELECT * FROM system.peers_v2") == []
    assert rows(e, "SELECT count(*) FROM system.peers") == [{"count": 0}]
    system_tables = [
        r["table_name"] for r in rows(e, "SELECT * FROM system_schema.tables WHERE keyspace_name = 'system'")
    ]
    assert any("scylla" in n for n in system_tables)
    dist = [
        r["table_name"]
        for r in rows(
            e, "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'system_distributed'"
        )
    ]
    assert sorted(dist) == ["cdc_generation_timestamps", "cdc_streams_descriptions_v2"]
    for t in ("functions", "aggregates", "indexes", "views", "triggers", "scylla_keyspaces", "scylla_tables"):
        rows(e, f"SELECT * FROM system_schema.{t}")


def test_generation_tables_and_control_new_generation() -> None:
    e = new_engine()
    gens = rows(e, "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'")
    assert len(gens) == 1
    streams = rows(
        e,
        "SELECT range_end, streams FROM system_distributed.cdc_streams_descriptions_v2 WHERE time = ?",
        gens[0]["time"],
    )
    assert len(streams) == 4 and all(len(r["streams"]) == 2 for r in streams)
    run(e, "INSERT INTO emulator.control (command, value) VALUES ('new_generation:3', '1000')")
    gens2 = rows(e, "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'")
    assert len(gens2) == 2 and gens2[0]["time"] > gens2[1]["time"]  # CLUSTERING ORDER BY (time DESC)
    newest = rows(
        e,
        "SELECT min(time) FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps' "
        "AND time > ?",
        gens[0]["time"],
    )
    assert newest == [{"system.min(time)": gens2[0]["time"]}]
    assert (
        len(
            rows(
                e,
                "SELECT streams FROM system_distributed.cdc_streams_descriptions_v2 WHERE time = ?",
                gens2[0]["time"],
            )
        )
        == 3
    )
    with pytest.raises(CqlError, match="Unknown emulator control command"):
        run(e, "INSERT INTO emulator.control (command, value) VALUES ('explode', '1')")


def test_system_keyspaces_are_read_only() -> None:
    e = new_engine()
    with pytest.raises(CqlError) as ei:
        run(e, "INSERT INTO system.peers (peer) VALUES ('1.2.3.4')")
    assert ei.value.code == ErrorCode.UNAUTHORIZED
    with pytest.raises(CqlError):
        run(e, "DROP TABLE system_distributed.cdc_generation_timestamps")

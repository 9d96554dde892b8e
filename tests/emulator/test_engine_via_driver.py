"""The engine behind the real protocol server, driven by the real scylla-driver."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cassandra.cluster import Cluster
from cassandra.query import SimpleStatement, dict_factory


def test_driver_metadata_writes_and_log_reads(emulator: Any) -> None:
    cluster = Cluster([emulator.host], port=emulator.port, protocol_version=4)
    try:
        s = cluster.connect()
        s.row_factory = dict_factory
        s.execute(
            "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 1}"
        )
        s.execute("CREATE TYPE ks.ut (a int, b text)")
        s.execute(
            "CREATE TABLE ks.t (pk int, ck int, v text, u ut, PRIMARY KEY (pk, ck)) "
            "WITH CLUSTERING ORDER BY (ck DESC) AND cdc = {'enabled': true}"
        )
        ins = s.prepare("INSERT INTO ks.t (pk, ck, v, u) VALUES (?, ?, ?, ?) USING TTL ?")
        for i in range(12):
            s.execute(ins, (i % 3, i, f"v{i}", (i, "x"), 3600))
        assert [r["ck"] for r in s.execute("SELECT ck FROM ks.t WHERE pk = 1")] == [10, 7, 4, 1]
        assert s.execute("INSERT INTO ks.t (pk, ck) VALUES (1, 1) IF NOT EXISTS").was_applied is False
        cluster.refresh_schema_metadata()
        meta = cluster.metadata.keyspaces["ks"]
        assert set(meta.tables) == {"t", "t_scylla_cdc_log"}
        assert [c.name for c in meta.tables["t"].clustering_key] == ["ck"]
        assert meta.tables["t"].clustering_key[0].is_reversed
        assert "cdc" in meta.tables["t"].extensions
        assert list(meta.user_types["ut"].field_names) == ["a", "b"]
        log = list(s.execute(SimpleStatement("SELECT * FROM ks.t_scylla_cdc_log", fetch_size=5)))
        # INSERT ... USING TTL with a non-frozen UDT: marker row, collection tombstone, cells (§2.3)
        assert sum(1 for r in log if r["cdc$end_of_batch"]) == 12
        assert [r["cdc$operation"] for r in log[:3]] == [2, 1, 1]
        sids = sorted({r["cdc$stream_id"] for r in log})
        gens = list(
            s.execute(
                "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps'"
            )
        )
        described = set()
        for row in s.execute(
            "SELECT streams FROM system_distributed.cdc_streams_descriptions_v2 WHERE time = %s",
            (gens[0]["time"],),
        ):
            described |= set(row["streams"])
        assert set(sids) <= described
        q = s.prepare(
            'SELECT "cdc$time", pk FROM ks.t_scylla_cdc_log WHERE "cdc$stream_id" IN ? '
            'AND "cdc$time" > minTimeuuid(?) AND "cdc$time" <= maxTimeuuid(?) BYPASS CACHE'
        )
        got = list(s.execute(q, (sids, dt.datetime(2000, 1, 1), dt.datetime(2100, 1, 1))))
        assert len(got) == len(log)
    finally:
        cluster.shutdown()


def test_alter_table_invalidates_prepared_statements_like_scylla(emulator: Any) -> None:
    """Scylla drops the prepared statements of an altered table and of its CDC log
    (query_processor::migration_subscriber::on_update_column_family): EXECUTE answers UNPREPARED,
    the driver prepares again, and a prepared ``SELECT *`` of the log returns the new columns."""
    from tests.scylla_emulator.api import CqlError, ErrorCode

    cluster = Cluster([emulator.host], port=emulator.port, protocol_version=4)
    try:
        s = cluster.connect()
        s.row_factory = dict_factory
        s.execute(
            "CREATE KEYSPACE pi WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        s.execute("CREATE TABLE pi.t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
        s.execute("CREATE TABLE pi.other (pk int PRIMARY KEY, v int)")
        ins = s.prepare("INSERT INTO pi.t (pk, v) VALUES (?, ?)")
        sel = s.prepare("SELECT * FROM pi.t_scylla_cdc_log")
        other = s.prepare("SELECT * FROM pi.other")
        s.execute(ins, (1, 1))
        assert "w" not in next(iter(s.execute(sel)))
        engine = emulator.engine
        s.execute("ALTER TABLE pi.t ADD w int")
        for stmt in (ins, sel):
            try:
                engine.execute_prepared(stmt.query_id, [], keyspace=None)
            except CqlError as exc:
                assert exc.code == ErrorCode.UNPREPARED
            else:
                raise AssertionError("the statement outlived the ALTER")
        engine.execute_prepared(other.query_id, [], keyspace=None)  # another table's: kept
        s.execute(s.prepare("INSERT INTO pi.t (pk, v, w) VALUES (?, ?, ?)"), (2, 2, 7))
        rows = list(s.execute(sel))  # the driver prepares again on UNPREPARED
        assert {"w", "cdc$deleted_w"} <= set(rows[0])
        assert [r["w"] for r in rows if r["pk"] == 2] == [7]
    finally:
        cluster.shutdown()

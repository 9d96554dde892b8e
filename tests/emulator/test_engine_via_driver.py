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

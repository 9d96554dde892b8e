"""Schema metadata through the real driver: what ``cluster.metadata`` sees in the emulator and how
it follows schema changes made by another client (SCHEMA_CHANGE events)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cassandra.cluster import Cluster

KS = "CREATE KEYSPACE {} WITH replication = {{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}}"


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def clusters(emulator: Any) -> Iterator[tuple[Cluster, Cluster]]:
    a = Cluster([emulator.host], port=emulator.port)
    # b only learns about a's changes from SCHEMA_CHANGE events; a short debounce keeps the test fast
    b = Cluster([emulator.host], port=emulator.port, schema_event_refresh_window=0.1)
    try:
        yield a, b
    finally:
        a.shutdown()
        b.shutdown()


def test_keyspaces_tables_columns_udts_in_metadata(clusters: tuple[Cluster, Cluster]) -> None:
    cluster, _ = clusters
    s = cluster.connect()
    s.execute(KS.format("shop"))
    s.execute("CREATE TYPE shop.price (amount decimal, currency text)")
    s.execute(
        "CREATE TABLE shop.orders (tenant text, day date, id timeuuid, note text static, "
        "total frozen<price>, "
        "tags set<text>, PRIMARY KEY ((tenant, day), id)) WITH CLUSTERING ORDER BY (id DESC) "
        "AND cdc = {'enabled': true, 'preimage': true}"
    )
    md = cluster.metadata
    # the log table is announced by its own SCHEMA_CHANGE event, refreshed after the driver's debounce
    _wait_for(lambda: "orders_scylla_cdc_log" in md.keyspaces["shop"].tables, "the CDC log table in metadata")
    assert {"system", "system_schema", "shop"} <= set(md.keyspaces)
    ks = md.keyspaces["shop"]
    assert ks.replication_strategy is not None
    assert list(ks.user_types) == ["price"]
    assert ks.user_types["price"].field_types == ["decimal", "text"]
    assert {"orders", "orders_scylla_cdc_log"} <= set(ks.tables)
    t = ks.tables["orders"]
    assert [c.name for c in t.partition_key] == ["tenant", "day"]
    assert [c.name for c in t.clustering_key] == ["id"]
    assert t.columns["id"].is_reversed and t.columns["note"].is_static
    assert t.columns["total"].cql_type == "frozen<price>" and t.columns["tags"].cql_type == "set<text>"
    assert [c.name for c in t.primary_key] == ["tenant", "day", "id"]
    log = ks.tables["orders_scylla_cdc_log"]
    assert [c.name for c in log.partition_key] == ["cdc$stream_id"]
    assert [c.name for c in log.clustering_key] == ["cdc$time", "cdc$batch_seq_no"]
    assert "CREATE TABLE shop.orders" in t.export_as_string()


def test_schema_change_from_another_client_updates_metadata(clusters: tuple[Cluster, Cluster]) -> None:
    a, b = clusters
    sa, sb = a.connect(), b.connect()
    sa.execute(KS.format("app"))
    sa.execute("CREATE TABLE app.t (k int PRIMARY KEY, v int)")
    _wait_for(lambda: "t" in b.metadata.keyspaces.get("app", _Empty).tables, "table creation seen by b")
    sa.execute("ALTER TABLE app.t ADD extra text")
    _wait_for(lambda: "extra" in b.metadata.keyspaces["app"].tables["t"].columns, "new column seen by b")
    assert b.metadata.keyspaces["app"].tables["t"].columns["extra"].cql_type == "text"
    sb.execute("INSERT INTO app.t (k, v, extra) VALUES (1, 2, 'x')")
    assert sa.execute("SELECT extra FROM app.t WHERE k = 1").one().extra == "x"
    sa.execute("ALTER TABLE app.t DROP v")
    _wait_for(lambda: "v" not in b.metadata.keyspaces["app"].tables["t"].columns, "dropped column seen by b")
    sa.execute("DROP TABLE app.t")
    _wait_for(lambda: "t" not in b.metadata.keyspaces["app"].tables, "dropped table seen by b")
    sa.execute("DROP KEYSPACE app")
    _wait_for(lambda: "app" not in b.metadata.keyspaces, "dropped keyspace seen by b")


def test_prepared_statement_sees_added_column_after_reprepare(clusters: tuple[Cluster, Cluster]) -> None:
    a, _ = clusters
    s = a.connect()
    s.execute(KS.format("pp"))
    s.execute("CREATE TABLE pp.t (k int PRIMARY KEY, v int)")
    s.execute("INSERT INTO pp.t (k, v) VALUES (1, 1)")
    s.execute("ALTER TABLE pp.t ADD w int")
    s.execute("UPDATE pp.t SET w = 5 WHERE k = 1")
    ps = s.prepare("SELECT * FROM pp.t WHERE k = ?")
    row = s.execute(ps, [1]).one()
    assert (row.k, row.v, row.w) == (1, 1, 5)


class _EmptyKs:
    tables: dict[str, Any] = {}


_Empty = _EmptyKs()

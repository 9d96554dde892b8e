"""System keyspaces served as ordinary, queryable tables.

* ``system``: local (the row the driver's control connection reads), peers/peers_v2 (empty),
  scylla_local (so cqlpy's "is this Scylla" probe finds a table named *scylla*), config (empty),
  roles / role_permissions (the roles and grants of ``auth.Auth``, rebuilt by ``refresh_roles``);
* ``system_schema``: the tables the driver's SchemaParserV3 reads, rebuilt from the catalog after
  every DDL (``refresh``), incl. ``tables.extensions['cdc']`` and log tables;
* ``system_distributed``: cdc_generation_timestamps / cdc_streams_descriptions_v2 (scylla-cdc.md §4.4),
  fed by ``generations.description_mutations()``; no legacy cdc_streams_descriptions;
* ``emulator.control (command text PRIMARY KEY, value text)``: INSERTs run emulator commands
  (see ``EmulatorEngine._control``).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from tests.scylla_emulator.catalog import KeyspaceDef, TableRt
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cql import parse
from tests.scylla_emulator.model import (
    AtomicCell,
    CollectionMutation,
    ColumnDef,
    PartitionMutation,
    RowMutation,
    TableDef,
)

if TYPE_CHECKING:
    from tests.scylla_emulator.engine import EmulatorEngine

__all__ = ["install", "put_row", "refresh", "refresh_cdc_streams", "refresh_local", "refresh_roles"]

_FM = "frozen<map<text, text>>"
_FL = "frozen<list<text>>"
SYSTEM_TABLES: dict[str, list[str]] = {
    "system": [
        "CREATE TABLE local (key text PRIMARY KEY, bootstrapped text, broadcast_address inet, cluster_name text, "
        "cql_version text, data_center text, gossip_generation int, host_id uuid, listen_address inet, "
        "native_protocol_version text, partitioner text, rack text, release_version text, rpc_address inet, "
        "rpc_port int, schema_version uuid, supported_features text, tokens set<text>, truncated_at map<uuid, blob>)",
        "CREATE TABLE peers (peer inet PRIMARY KEY, data_center text, host_id uuid, preferred_ip inet, rack text, "
        "release_version text, rpc_address inet, schema_version uuid, supported_features text, tokens set<text>)",
        "CREATE TABLE peers_v2 (peer inet, peer_port int, data_center text, host_id uuid, native_address inet, "
        "native_port int, preferred_ip inet, preferred_port int, rack text, release_version text, "
        "schema_version uuid, supported_features text, tokens set<text>, PRIMARY KEY (peer, peer_port))",
        "CREATE TABLE scylla_local (key text PRIMARY KEY, value text)",
        "CREATE TABLE config (name text PRIMARY KEY, source text, type text, value text)",
        "CREATE TABLE roles (role text PRIMARY KEY, can_login boolean, is_superuser boolean, "
        "member_of set<text>, salted_hash text)",
        "CREATE TABLE role_permissions (role text, resource text, permissions set<text>, "
        "PRIMARY KEY (role, resource))",
        # db/virtual_tables.cc cdc_timestamps_table / cdc_streams_table (tablet keyspaces)
        "CREATE TABLE cdc_timestamps (keyspace_name text, table_name text, timestamp timestamp, "
        "PRIMARY KEY ((keyspace_name, table_name), timestamp)) WITH CLUSTERING ORDER BY (timestamp DESC)",
        "CREATE TABLE cdc_streams (keyspace_name text, table_name text, timestamp timestamp, "
        "stream_state tinyint, stream_id blob, "
        "PRIMARY KEY ((keyspace_name, table_name), timestamp, stream_state, stream_id))",
    ],
    "system_schema": [
        f"CREATE TABLE keyspaces (keyspace_name text PRIMARY KEY, durable_writes boolean, replication {_FM})",
        f"CREATE TABLE tables (keyspace_name text, table_name text, bloom_filter_fp_chance double, caching {_FM}, "
        f"comment text, compaction {_FM}, compression {_FM}, crc_check_chance double, "
        "dclocal_read_repair_chance double, default_time_to_live int, extensions frozen<map<text, blob>>, "
        "flags frozen<set<text>>, gc_grace_seconds int, id uuid, max_index_interval int, "
        "memtable_flush_period_in_ms int, min_index_interval int, read_repair_chance double, "
        "speculative_retry text, PRIMARY KEY (keyspace_name, table_name))",
        "CREATE TABLE columns (keyspace_name text, table_name text, column_name text, clustering_order text, "
        "column_name_bytes blob, kind text, position int, type text, "
        "PRIMARY KEY (keyspace_name, table_name, column_name))",
        f"CREATE TABLE types (keyspace_name text, type_name text, field_names {_FL}, field_types {_FL}, "
        "PRIMARY KEY (keyspace_name, type_name))",
        f"CREATE TABLE functions (keyspace_name text, function_name text, argument_types {_FL}, "
        f"argument_names {_FL}, body text, called_on_null_input boolean, language text, return_type text, "
        "PRIMARY KEY (keyspace_name, function_name, argument_types))",
        f"CREATE TABLE aggregates (keyspace_name text, aggregate_name text, argument_types {_FL}, "
        "final_func text, initcond text, return_type text, state_func text, state_type text, "
        "PRIMARY KEY (keyspace_name, aggregate_name, argument_types))",
        f"CREATE TABLE indexes (keyspace_name text, table_name text, index_name text, kind text, options {_FM}, "
        "PRIMARY KEY (keyspace_name, table_name, index_name))",
        "CREATE TABLE views (keyspace_name text, view_name text, base_table_id uuid, base_table_name text, "
        f"include_all_columns boolean, where_clause text, bloom_filter_fp_chance double, caching {_FM}, "
        f"comment text, compaction {_FM}, compression {_FM}, crc_check_chance double, "
        "dclocal_read_repair_chance double, default_time_to_live int, extensions frozen<map<text, blob>>, "
        "gc_grace_seconds int, id uuid, max_index_interval int, memtable_flush_period_in_ms int, "
        "min_index_interval int, read_repair_chance double, speculative_retry text, "
        "PRIMARY KEY (keyspace_name, view_name))",
        f"CREATE TABLE triggers (keyspace_name text, table_name text, trigger_name text, options {_FM}, "
        "PRIMARY KEY (keyspace_name, table_name, trigger_name))",
        "CREATE TABLE dropped_columns (keyspace_name text, table_name text, column_name text, "
        "dropped_time timestamp, type text, PRIMARY KEY (keyspace_name, table_name, column_name))",
        "CREATE TABLE scylla_keyspaces (keyspace_name text PRIMARY KEY, consistency text, initial_tablets int, "
        f"storage_options {_FM}, storage_type text)",
        f"CREATE TABLE scylla_tables (keyspace_name text, table_name text, cdc {_FM}, partitioner text, "
        "version uuid, PRIMARY KEY (keyspace_name, table_name))",
    ],
    "system_distributed": [
        "CREATE TABLE cdc_generation_timestamps (key text, time timestamp, expired timestamp, "
        "PRIMARY KEY (key, time)) WITH CLUSTERING ORDER BY (time DESC)",
        "CREATE TABLE cdc_streams_descriptions_v2 (time timestamp, range_end bigint, streams frozen<set<blob>>, "
        "PRIMARY KEY (time, range_end))",
    ],
    "emulator": ["CREATE TABLE control (command text PRIMARY KEY, value text)"],
}
_LOCAL_STRATEGY = {"class": "org.apache.cassandra.locator.LocalStrategy"}
_REPLICATION = {
    "system": _LOCAL_STRATEGY,
    "system_schema": _LOCAL_STRATEGY,
    "system_distributed": {"class": "org.apache.cassandra.locator.SimpleStrategy", "replication_factor": "3"},
    "emulator": {"class": "org.apache.cassandra.locator.LocalStrategy"},
}


def _table_def(ks: str, cql: str) -> TableDef:
    st, _ = parse(cql)
    assert isinstance(st, A.CreateTable)
    by = {c[0]: c for c in st.columns}
    cols = [ColumnDef(n, by[n][1], "partition_key", i) for i, n in enumerate(st.partition_key)]
    cols += [
        ColumnDef(n, by[n][1], "clustering", i, st.clustering_order.get(n, "asc"))  # type: ignore[arg-type]
        for i, n in enumerate(st.clustering)
    ]
    cols += [
        ColumnDef(n, t, "regular") for n, t, _ in st.columns if n not in st.partition_key + st.clustering
    ]
    return TableDef(ks, st.name, cols, {}, None, False, 0, uuid.uuid5(uuid.NAMESPACE_OID, f"{ks}.{st.name}"))


def install(eng: EmulatorEngine) -> None:
    eng.host_id = uuid.uuid4()  # type: ignore[attr-defined]
    for ks, stmts in SYSTEM_TABLES.items():
        k = KeyspaceDef(ks, dict(_REPLICATION[ks]), True, None, system=True)
        eng.catalog.keyspaces[ks] = k
        for cql in stmts:
            d = _table_def(ks, cql)
            k.tables[d.name] = eng.catalog.make_rt(d)
    refresh(eng)


def put_row(eng: EmulatorEngine, rt: TableRt, values: dict[str, Any], ts: int = 1) -> None:
    """Write one row (marker + cells) directly into storage, bypassing CQL and CDC."""
    pk = tuple(values[n] for n in rt.pk_names)
    ck = tuple(values[n] for n in rt.ck_names)
    row = RowMutation(ck, marker=AtomicCell(ts))
    for n, v in values.items():
        c = rt.cols[n]
        if c.kind in ("partition_key", "clustering") or v is None:
            continue
        t = rt.types[n]
        if t.multicell:
            if t.name == "set":
                cells = [(x, AtomicCell(ts, None)) for x in v]
            elif t.name == "map":
                cells = [(a, AtomicCell(ts, b)) for a, b in v.items()]
            else:
                cells = [
                    (k, AtomicCell(ts, x)) for k, x in zip(eng.writer.append_keys(len(v)), v, strict=True)
                ]
            row.cells[n] = CollectionMutation(ts - 1, cells)
        else:
            row.cells[n] = AtomicCell(ts, v)
    pkb = rt.pk_bytes(pk)
    eng._apply_one(
        PartitionMutation(rt.keyspace, rt.name, pk, rt.token_of(pk, pkb), rows=[row]), eng.now_us()
    )


def refresh_local(eng: EmulatorEngine) -> None:
    rt = eng.catalog.table("system", "local")
    rt.store.clear()
    put_row(
        eng,
        rt,
        {
            "key": "local",
            "bootstrapped": "COMPLETED",
            "broadcast_address": eng.address,
            "cluster_name": "cdcd emulator",
            "cql_version": "3.3.1",
            "data_center": "datacenter1",
            "gossip_generation": 1,
            "host_id": eng.host_id,  # type: ignore[attr-defined]
            "listen_address": eng.address,
            "native_protocol_version": "4",
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "rack": "rack1",
            "release_version": "3.0.8",
            "rpc_address": eng.address,
            "rpc_port": eng.port,
            "schema_version": eng.catalog.schema_version,
            "supported_features": "CDC,CDC_GENERATIONS_V2",
            "tokens": sorted(str(t) for t in eng.generations.node_tokens()),
        },
    )
    sl = eng.catalog.table("system", "scylla_local")
    if not sl.store.partitions:
        put_row(eng, sl, {"key": "cluster_supports_cdc", "value": "true"})


def refresh_cdc_streams(eng: EmulatorEngine) -> None:
    """Rebuild system.cdc_timestamps and system.cdc_streams from ``eng.tablets`` (per base table:
    every set's timestamp; its current streams as state 0, closed 1, opened 2)."""
    from tests.scylla_emulator.cqltypes_util import ms_to_datetime

    tablets = getattr(eng, "tablets", None)
    if tablets is None:
        return
    stamps = eng.catalog.table("system", "cdc_timestamps")
    streams = eng.catalog.table("system", "cdc_streams")
    stamps.store.clear()
    streams.store.clear()
    for t in tablets.tables.values():
        for ss in t.sets:
            when = ms_to_datetime(ss.timestamp_ms)
            base = {"keyspace_name": t.keyspace, "table_name": t.table, "timestamp": when}
            put_row(eng, stamps, base)
            for state, ids in ((0, ss.streams), (1, ss.closed), (2, ss.opened)):
                for sid in ids:
                    put_row(eng, streams, {**base, "stream_state": state, "stream_id": sid})


def refresh_roles(eng: EmulatorEngine) -> None:
    """Rebuild system.roles and system.role_permissions from ``eng.auth``."""
    for name, rows in (("roles", eng.auth.role_rows()), ("role_permissions", eng.auth.permission_rows())):
        rt = eng.catalog.table("system", name)
        rt.store.clear()
        for row in rows:
            put_row(eng, rt, row)


def _str_map(v: Any) -> dict[str, str]:
    if isinstance(v, dict):
        return {str(a): (str(b).lower() if isinstance(b, bool) else str(b)) for a, b in v.items()}
    return {}


def refresh(eng: EmulatorEngine) -> None:
    """Rebuild system_schema.* and system.local from the catalog."""
    cat = eng.catalog
    names = [
        "keyspaces",
        "tables",
        "columns",
        "types",
        "dropped_columns",
        "scylla_keyspaces",
        "scylla_tables",
    ]
    rts = {n: cat.table("system_schema", n) for n in names}
    for rt in rts.values():
        rt.store.clear()
    try:
        from tests.scylla_emulator.cdc import cdc_extension_blob
    except ImportError:  # pragma: no cover
        cdc_extension_blob = None  # type: ignore[assignment]
    for ks in cat.keyspaces.values():
        put_row(
            eng,
            rts["keyspaces"],
            {
                "keyspace_name": ks.name,
                "durable_writes": ks.durable_writes,
                "replication": dict(ks.replication),
            },
        )
        put_row(
            eng,
            rts["scylla_keyspaces"],
            {
                "keyspace_name": ks.name,
                "initial_tablets": int(ks.tablets.get("initial", 0)) if ks.tablets is not None else None,
            },
        )
        for u in ks.types.values():
            put_row(
                eng,
                rts["types"],
                {
                    "keyspace_name": ks.name,
                    "type_name": u.name,
                    "field_names": list(u.field_names),
                    "field_types": [cat.resolve(t, ks.name).text for t in u.field_types],
                },
            )
        for t in ks.tables.values():
            d = t.d
            o = d.options
            ext: dict[str, bytes] = {}
            if d.cdc is not None and cdc_extension_blob is not None:
                ext["cdc"] = cdc_extension_blob(d.cdc)
            put_row(
                eng,
                rts["tables"],
                {
                    "keyspace_name": ks.name,
                    "table_name": d.name,
                    "bloom_filter_fp_chance": float(o.get("bloom_filter_fp_chance", 0.01)),
                    "caching": _str_map(o.get("caching")) or {"keys": "ALL", "rows_per_partition": "ALL"},
                    "comment": str(o.get("comment", "")),
                    "compaction": _str_map(o.get("compaction"))
                    or {"class": "SizeTieredCompactionStrategy", "max_threshold": "32", "min_threshold": "4"},
                    "compression": _str_map(o.get("compression"))
                    or {"sstable_compression": "org.apache.cassandra.io.compress.LZ4Compressor"},
                    "crc_check_chance": float(o.get("crc_check_chance", 1.0)),
                    "dclocal_read_repair_chance": float(o.get("dclocal_read_repair_chance", 0.0)),
                    "default_time_to_live": d.default_ttl,
                    "extensions": ext,
                    "flags": ["compound"],
                    "gc_grace_seconds": int(o.get("gc_grace_seconds", 864000)),
                    "id": d.table_id,
                    "max_index_interval": int(o.get("max_index_interval", 2048)),
                    "memtable_flush_period_in_ms": int(o.get("memtable_flush_period_in_ms", 0)),
                    "min_index_interval": int(o.get("min_index_interval", 128)),
                    "read_repair_chance": float(o.get("read_repair_chance", 0.0)),
                    "speculative_retry": str(o.get("speculative_retry", "99.0PERCENTILE")),
                },
            )
            put_row(
                eng,
                rts["scylla_tables"],
                {
                    "keyspace_name": ks.name,
                    "table_name": d.name,
                    "version": cat.schema_version,
                    "partitioner": "com.scylladb.dht.CDCPartitioner" if d.is_cdc_log else None,
                },
            )
            for c in d.columns:
                put_row(
                    eng,
                    rts["columns"],
                    {
                        "keyspace_name": ks.name,
                        "table_name": d.name,
                        "column_name": c.name,
                        "clustering_order": c.clustering_order if c.kind == "clustering" else "none",
                        "column_name_bytes": c.name.encode(),
                        "kind": c.kind,
                        "position": c.position if c.kind in ("partition_key", "clustering") else -1,
                        "type": t.types[c.name].text,
                    },
                )
            for n, (ty, when) in d.dropped.items():
                from tests.scylla_emulator.cqltypes_util import ms_to_datetime

                put_row(
                    eng,
                    rts["dropped_columns"],
                    {
                        "keyspace_name": ks.name,
                        "table_name": d.name,
                        "column_name": n,
                        "dropped_time": ms_to_datetime(when // 1000),
                        "type": ty,
                    },
                )
    refresh_local(eng)
    refresh_cdc_streams(eng)

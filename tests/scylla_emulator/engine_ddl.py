"""DDL: keyspaces, tables (with CDC log create/attach/mirror), user types, TRUNCATE.

Every schema change bumps ``catalog.schema_version``, refreshes the system_schema tables and
returns a ``SchemaChangeResult``. Error texts follow Scylla/Cassandra (shared/docs/scylla-cdc.md §1.1).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any

from tests.scylla_emulator import systables
from tests.scylla_emulator.api import CqlError, ErrorCode, Result, SchemaChangeResult, VoidResult
from tests.scylla_emulator.catalog import KeyspaceDef, TableRt, UserTypeDef
from tests.scylla_emulator.cql import ast as A
from tests.scylla_emulator.cqltypes_util import normalize
from tests.scylla_emulator.model import CdcTableOptions, ColumnDef, TableDef
from tests.scylla_emulator.tablets import tablet_count_for

if TYPE_CHECKING:
    from tests.scylla_emulator.engine import EmulatorEngine

__all__ = ["TABLE_OPTIONS", "execute"]

TABLE_OPTIONS = {
    "bloom_filter_fp_chance",
    "caching",
    "comment",
    "compaction",
    "compression",
    "crc_check_chance",
    "dclocal_read_repair_chance",
    "default_time_to_live",
    "gc_grace_seconds",
    "max_index_interval",
    "memtable_flush_period_in_ms",
    "min_index_interval",
    "read_repair_chance",
    "speculative_retry",
    "cdc",
    "paxos_grace_seconds",
    "tombstone_gc",
    "synchronous_updates",
    "id",
    "in_memory",
    "tablets",
}
_LOG_COLUMNS_MSG = (
    "You cannot modify the set of columns of a CDC log table directly. Modify the base table instead."
)
# cql3/statements/alter_table_statement.cc: a log table whose base has CDC disabled (or is gone)
# is still a CDC log table ("was_cdc_log_table", by its partitioner)
_INACTIVE_LOG_COLUMNS_MSG = (
    "You cannot modify the set of columns of a CDC log table directly. "
    "Although the base table has deactivated CDC, this table will continue being "
    "a CDC log table until it is dropped. If you want to modify the columns in it, "
    "you can only do that by reenabling CDC on the base table, which will reattach "
    "this log table. Then you will be able to modify the columns in the base table, "
    "and that will have effect on the log table too. Modifying the columns of a CDC "
    "log table directly is never allowed."
)
_INACTIVE_LOG_RENAME_MSG = (
    "You cannot rename a column of a CDC log table. Although the base table "
    "has deactivated CDC, this table will continue being a CDC log table until it "
    "is dropped."
)


def _log_active(ks: KeyspaceDef, log: TableRt) -> bool:
    """cdc::is_log_for_some_table: the base exists and has CDC enabled."""
    base = ks.tables.get(log.name[: -len("_scylla_cdc_log")])
    return base is not None and base.d.cdc is not None and base.d.cdc.enabled


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


def _cdc_module() -> Any:
    try:
        from tests.scylla_emulator import cdc
    except ImportError as e:  # pragma: no cover
        raise CqlError(ErrorCode.SERVER_ERROR, "CDC is not available in this emulator build") from e
    return cdc


def _changed(  # noqa: PLR0917
    eng: EmulatorEngine,
    change: str,
    target: str,
    ks: str,
    name: str | None,
    extra: list[SchemaChangeResult] | None = None,
) -> SchemaChangeResult:
    eng.catalog.bump()
    eng.schema_events.extend(extra or [])
    if change in ("UPDATED", "DROPPED") and target in ("TABLE", "KEYSPACE"):
        # Scylla drops the prepared statements of an altered or dropped table (its log table's
        # too): query_processor::migration_subscriber::on_update_column_family (all changes,
        # "#1255: Ignoring columns_changed deliberately") / on_drop_*; the next EXECUTE gets
        # UNPREPARED and the driver prepares again (a `SELECT *` then has the new columns).
        tables = None if target == "KEYSPACE" else {name, *(e.name for e in extra or () if e.name)}
        eng.invalidate_prepared(ks, tables)
    for rt in eng.catalog.all_tables():
        _refresh_rt(eng, rt)
    systables.refresh(eng)
    return SchemaChangeResult(change, target, ks, name)


def _refresh_rt(eng: EmulatorEngine, rt: TableRt) -> None:
    ks = eng.catalog.keyspaces[rt.keyspace]
    ks.tables[rt.name] = eng.catalog.make_rt(rt.d, rt.store)


def execute(eng: EmulatorEngine, st: Any, keyspace: str | None) -> Result:
    if isinstance(st, A.CreateKeyspace):
        return create_keyspace(eng, st)
    if isinstance(st, A.DropKeyspace):
        return drop_keyspace(eng, st)
    if isinstance(st, A.CreateTable):
        return create_table(eng, st, st.keyspace or keyspace)
    if isinstance(st, A.DropTable):
        return drop_table(eng, st, st.keyspace or keyspace)
    if isinstance(st, A.AlterTable):
        return alter_table(eng, st, st.keyspace or keyspace)
    if isinstance(st, A.Truncate):
        rt = eng.catalog.table(st.keyspace or keyspace, st.name)
        _user_keyspace(eng, rt.keyspace)
        rt.store.clear()
        return VoidResult()
    if isinstance(st, A.CreateType | A.DropType | A.AlterType):
        return _types(eng, st, st.keyspace or keyspace)
    raise inv(f"Unsupported by the Scylla emulator: {type(st).__name__}")


def _user_keyspace(eng: EmulatorEngine, name: str) -> KeyspaceDef:
    ks = eng.catalog.keyspace(name)
    if ks.system:
        raise CqlError(ErrorCode.UNAUTHORIZED, f"{name} keyspace is not user-modifiable.")
    return ks


# ------------------------------------------------------------------------------------- keyspaces
_STRATEGIES = {
    "simplestrategy": "org.apache.cassandra.locator.SimpleStrategy",
    "networktopologystrategy": "org.apache.cassandra.locator.NetworkTopologyStrategy",
    "localstrategy": "org.apache.cassandra.locator.LocalStrategy",
    "everywherestrategy": "org.apache.cassandra.locator.EverywhereStrategy",
}


def create_keyspace(eng: EmulatorEngine, st: A.CreateKeyspace) -> Result:
    if st.name in eng.catalog.keyspaces:
        if st.if_not_exists:
            return VoidResult()
        raise CqlError(
            ErrorCode.ALREADY_EXISTS, f"Keyspace {st.name} already exists", keyspace=st.name, table=""
        )
    repl = dict(st.replication)
    cls = repl.get("class")
    if cls is None:
        raise CqlError(ErrorCode.CONFIG_ERROR, "Missing replication strategy class")
    short = cls.rsplit(".", 1)[-1].lower()
    if short not in _STRATEGIES:
        raise CqlError(ErrorCode.CONFIG_ERROR, f"Unable to find replication strategy class '{cls}'")
    repl["class"] = _STRATEGIES[short]
    if short == "simplestrategy" and "replication_factor" not in repl:
        raise CqlError(
            ErrorCode.CONFIG_ERROR, "SimpleStrategy requires a replication_factor strategy option."
        )
    tablets = st.tablets
    if tablets is None and eng.tablets_default:
        tablets = {"enabled": "true", "initial": 0}  # tablets_mode_for_new_keyspaces: enabled
    if tablets is not None:
        for k in tablets:
            if k not in ("enabled", "initial"):
                raise CqlError(ErrorCode.CONFIG_ERROR, f"Unknown tablets option '{k}'")
        if str(tablets.get("enabled", "true")).lower() in ("true", "1") and "initial" not in tablets:
            tablets = {**tablets, "initial": 0}
        if str(tablets.get("enabled", "true")).lower() in ("false", "0"):
            tablets = None
    eng.catalog.keyspaces[st.name] = KeyspaceDef(st.name, repl, st.durable_writes, tablets)
    return _changed(eng, "CREATED", "KEYSPACE", st.name, None)


def drop_keyspace(eng: EmulatorEngine, st: A.DropKeyspace) -> Result:
    if st.name not in eng.catalog.keyspaces:
        if st.if_exists:
            return VoidResult()
        raise CqlError(ErrorCode.CONFIG_ERROR, f"Cannot drop non existing keyspace '{st.name}'.")
    _user_keyspace(eng, st.name)
    del eng.catalog.keyspaces[st.name]
    eng.tablets.drop(st.name)
    return _changed(eng, "DROPPED", "KEYSPACE", st.name, None)


# ------------------------------------------------------------------------------------- tables
def _options(raw: dict[str, Any]) -> tuple[dict[str, Any], CdcTableOptions | None, int | None]:
    opts: dict[str, Any] = {}
    cdc: CdcTableOptions | None = None
    ttl: int | None = None
    for k, v in raw.items():
        if k not in TABLE_OPTIONS:
            raise CqlError(ErrorCode.SYNTAX_ERROR, f"Unknown property '{k}'")
        if k == "cdc":
            if isinstance(v, dict):
                m = {str(a): (str(b).lower() if isinstance(b, bool) else str(b)) for a, b in v.items()}
            elif isinstance(v, bool) or str(v).lower() in ("true", "false"):
                m = {"enabled": str(v).lower()}
            else:
                raise CqlError(ErrorCode.SYNTAX_ERROR, f"Invalid value for property 'cdc': {v!r}")
            cdc = _cdc_module().parse_cdc_options(m)
        elif k == "default_time_to_live":
            try:
                ttl = int(v)
            except (TypeError, ValueError) as e:
                raise CqlError(
                    ErrorCode.SYNTAX_ERROR, f"Invalid value for default_time_to_live: {v!r}"
                ) from e
            if ttl < 0:
                raise CqlError(
                    ErrorCode.CONFIG_ERROR, "default_time_to_live must be greater than or equal to 0"
                )
            opts[k] = ttl
        elif k == "id":
            raise CqlError(ErrorCode.CONFIG_ERROR, "Cannot set the table id")
        elif k == "tablets":
            opts[k] = _tablet_options(v)
        elif k in _DOUBLE_OPTIONS or k in _INT_OPTIONS:
            opts[k] = _number(k, v)
        else:
            opts[k] = v
    _check_numbers(opts)
    return opts, cdc, ttl


# cql3/statements/cf_prop_defs.cc: options read with get_double / get_int (stored, and shown in
# system_schema.tables)
_DOUBLE_OPTIONS = (
    "bloom_filter_fp_chance",
    "crc_check_chance",
    "dclocal_read_repair_chance",
    "read_repair_chance",
)
_INT_OPTIONS = ("gc_grace_seconds", "max_index_interval", "min_index_interval", "memtable_flush_period_in_ms")


def _number(k: str, v: Any) -> float | int:
    try:
        return float(v) if k in _DOUBLE_OPTIONS else int(str(v))
    except (TypeError, ValueError) as e:
        kind = "double" if k in _DOUBLE_OPTIONS else "integer"
        raise CqlError(ErrorCode.SYNTAX_ERROR, f"Invalid {kind} value {v} for '{k}'") from e


def _check_numbers(opts: dict[str, Any]) -> None:
    """cf_prop_defs::validate (the checks on the options above; messages are Scylla's)."""
    lo, hi = opts.get("min_index_interval", 128), opts.get("max_index_interval", 2048)
    if lo < 1:
        raise CqlError(ErrorCode.CONFIG_ERROR, "min_index_interval must be greater than 0")
    if hi < lo:
        raise CqlError(ErrorCode.CONFIG_ERROR, "max_index_interval must be greater than min_index_interval")
    fp = opts.get("bloom_filter_fp_chance")
    if fp is not None and not 0 < fp <= 1.0:
        raise CqlError(
            ErrorCode.CONFIG_ERROR,
            f"bloom_filter_fp_chance must be larger than 0 and less than or equal to 1.0 (got {fp})",
        )
    flush = opts.get("memtable_flush_period_in_ms", 0)
    if flush != 0 and flush < 60000:
        raise CqlError(ErrorCode.CONFIG_ERROR, "memtable_flush_period_in_ms must be 0 or greater than 60000")


_TABLET_OPTIONS = ("min_tablet_count", "max_tablet_count", "min_per_shard_tablet_count",
                   "expected_data_size_in_gb", "pow2_count")  # fmt: skip


def _tablet_options(v: Any) -> dict[str, str]:
    """db/tablet_options.cc::validate (the messages are Scylla's)."""
    if not isinstance(v, dict):
        raise CqlError(ErrorCode.SYNTAX_ERROR, f"Invalid value for property 'tablets': {v!r}")
    out = _str_map(v)
    for k, val in out.items():
        if k not in _TABLET_OPTIONS:
            raise CqlError(ErrorCode.CONFIG_ERROR, f"Unknown tablet option: '{k}'")
        if k == "pow2_count":
            continue
        try:
            num = float(val) if k == "min_per_shard_tablet_count" else int(val)
        except ValueError as e:
            raise CqlError(ErrorCode.CONFIG_ERROR, f"Invalid value '{val}' for {k}") from e
        if num < 0 or (k == "max_tablet_count" and num == 0):
            raise CqlError(ErrorCode.CONFIG_ERROR, f"Invalid value '{val}' for {k}")
    return out


def create_table(eng: EmulatorEngine, st: A.CreateTable, ksname: str | None) -> Result:
    ks = eng.catalog.keyspace(ksname)
    _user_keyspace(eng, ks.name)
    if st.name in ks.tables:
        if st.if_not_exists:
            return VoidResult()
        raise CqlError(
            ErrorCode.ALREADY_EXISTS,
            f'Cannot add already existing table "{st.name}" to keyspace "{ks.name}"',
            keyspace=ks.name,
            table=st.name,
        )
    if st.compact_storage:
        raise inv("Unsupported by the Scylla emulator: COMPACT STORAGE")
    if len(st.name) > 192:
        raise inv(
            f"Table name must not be more than 192 characters long (got {len(st.name)} characters for "
            f'"{st.name}")'
        )
    names = [c[0] for c in st.columns]
    for n in names:
        if names.count(n) > 1:
            raise inv(f"Multiple definition of identifier {n}")
    by_name = {c[0]: c for c in st.columns}
    for n in st.partition_key + st.clustering:
        if n not in by_name:
            raise inv(f"Unknown definition {n} referenced in PRIMARY KEY")
    for n in st.clustering_order:
        if n not in st.clustering:
            raise inv(
                f"Missing CLUSTERING ORDER for column {n}"
                if False
                else "Only clustering key columns can be defined in CLUSTERING ORDER directive"
            )
    if st.clustering_order and list(st.clustering_order) != st.clustering[: len(st.clustering_order)]:
        raise inv(
            "The order of columns in the CLUSTERING ORDER directive must be the one of the clustering key"
        )
    cols: list[ColumnDef] = []
    for i, n in enumerate(st.partition_key):
        cols.append(ColumnDef(n, by_name[n][1], "partition_key", i))
    for i, n in enumerate(st.clustering):
        cols.append(ColumnDef(n, by_name[n][1], "clustering", i, st.clustering_order.get(n, "asc")))  # type: ignore[arg-type]
    has_counter = False
    for n, t, static in st.columns:
        if n in st.partition_key or n in st.clustering:
            if static:
                raise inv(f"Static column {n} cannot be part of the PRIMARY KEY")
            continue
        if static and not st.clustering:
            raise inv(
                "Static columns are only useful (and thus allowed) if the table has at least one clustering "
                "column"
            )
        cols.append(ColumnDef(n, t, "static" if static else "regular"))
    opts, cdc, ttl = _options(st.options)
    _check_tablet_options(ks, opts)
    d = TableDef(ks.name, st.name, cols, opts, cdc, False, ttl or 0, uuid.uuid4())
    rt = eng.catalog.make_rt(d)  # resolves types (unknown types raise here)
    for c in cols:
        t = rt.types[c.name]
        if t.name == "counter":
            has_counter = True
        if c.kind in ("partition_key", "clustering"):
            if t.multicell:
                raise inv(
                    f"Invalid non-frozen {'collection' if t.is_collection else 'user-defined'} type for "
                    f"PRIMARY KEY component {c.name}"
                )
            if t.name == "counter":
                raise inv(f"counter type is not supported for PRIMARY KEY column '{c.name}'")
            if t.name == "duration":
                raise inv(f"duration type is not supported for PRIMARY KEY column '{c.name}'")
    if has_counter and any(
        rt.types[c.name].name != "counter" for c in cols if c.kind in ("regular", "static")
    ):
        raise inv("Cannot mix counter and non counter columns in the same table")
    if has_counter and ttl:
        raise inv("Cannot set default_time_to_live on a table with counters")
    log_rt = None
    if cdc is not None and cdc.enabled:
        log_rt = _new_log(eng, ks, d)
    ks.tables[st.name] = rt
    extra = []
    if log_rt is not None:
        ks.tables[log_rt.name] = log_rt
        extra.append(SchemaChangeResult("CREATED", "TABLE", ks.name, log_rt.name))
        _new_stream_set(eng, ks, d)
    return _changed(eng, "CREATED", "TABLE", ks.name, st.name, extra)


def _check_tablet_options(ks: KeyspaceDef, opts: dict[str, Any]) -> None:
    """cf_prop_defs::validate: table tablet options need a tablet keyspace."""
    if "tablets" in opts and ks.tablets is None:
        raise CqlError(
            ErrorCode.CONFIG_ERROR, "tablet options cannot be used when tablets are disabled for the keyspace"
        )


def _tablet_count(eng: EmulatorEngine, ks: KeyspaceDef, d: TableDef) -> int:
    """Tablets of ``d`` (tablets.tablet_count_for): the table's own tablet options, else the
    keyspace's ``initial``, else the emulator's default."""
    initial = int((ks.tablets or {}).get("initial", 0) or 0)
    opts = d.options.get("tablets")
    return tablet_count_for(_str_map(opts), initial or eng.tablets.default_count)


def _new_stream_set(eng: EmulatorEngine, ks: KeyspaceDef, d: TableDef) -> None:
    """A CDC log was created for ``d``: in a tablet keyspace the table gets its stream set."""
    if ks.tablets is not None:
        eng.tablets.create(ks.name, d.name, _tablet_count(eng, ks, d))


def _str_map(v: Any) -> dict[str, str]:
    if isinstance(v, dict):
        return {str(a): (str(b).lower() if isinstance(b, bool) else str(b)) for a, b in v.items()}
    return {}


def _new_log(eng: EmulatorEngine, ks: KeyspaceDef, base: TableDef) -> TableRt:
    cdc = _cdc_module()
    log_name = base.name + cdc.LOG_SUFFIX
    if log_name in ks.tables:
        raise inv(f"{ks.name}.{log_name} already exists")
    d = cdc.log_table_def(base)
    d.table_id = uuid.uuid4()
    return eng.catalog.make_rt(d)


def drop_table(eng: EmulatorEngine, st: A.DropTable, ksname: str | None) -> Result:
    ks = eng.catalog.keyspace(ksname)
    _user_keyspace(eng, ks.name)
    rt = ks.tables.get(st.name)
    if rt is None:
        if st.if_exists:
            return VoidResult()
        raise inv(f"Cannot drop non existing table '{st.name}' in keyspace '{ks.name}'.")
    if rt.d.is_cdc_log:
        base = ks.tables.get(st.name[: -len("_scylla_cdc_log")])
        if base is not None and base.d.cdc is not None and base.d.cdc.enabled:
            raise inv(
                f"Cannot drop CDC log table {ks.name}.{st.name} while CDC is enabled on {ks.name}.{base.name}; "
                f"disable CDC first"
            )
    del ks.tables[st.name]
    if rt.d.is_cdc_log:  # its streams go with it (cdc/log.cc on_before_drop_column_family)
        eng.tablets.drop(ks.name, st.name[: -len("_scylla_cdc_log")])
    log = ks.tables.get(st.name + "_scylla_cdc_log")
    extra = []
    if log is not None and log.d.is_cdc_log:
        eng.tablets.drop(ks.name, st.name)
        del ks.tables[log.name]
        extra.append(SchemaChangeResult("DROPPED", "TABLE", ks.name, log.name))
    return _changed(eng, "DROPPED", "TABLE", ks.name, st.name, extra)


def _log_of(ks: KeyspaceDef, base: TableRt) -> TableRt | None:
    log = ks.tables.get(base.name + "_scylla_cdc_log")
    return log if log is not None and log.d.is_cdc_log else None


def _is_attached_log(ks: KeyspaceDef, rt: TableRt) -> bool:
    return rt.d.is_cdc_log


def alter_table(eng: EmulatorEngine, st: A.AlterTable, ksname: str | None) -> Result:
    ks = eng.catalog.keyspace(ksname)
    _user_keyspace(eng, ks.name)
    rt = ks.tables.get(st.name)
    if rt is None:
        raise inv(
            f"Column family '{st.name}' not found in keyspace '{ks.name}'"
            if False
            else f"unconfigured table {st.name}"
        )
    d = rt.d.copy()
    if rt.d.is_cdc_log and st.action in ("add", "drop", "alter"):
        raise inv(_LOG_COLUMNS_MSG if _log_active(ks, rt) else _INACTIVE_LOG_COLUMNS_MSG)
    if rt.d.is_cdc_log and st.action == "rename":
        raise inv(
            "Cannot rename a column of a CDC log table." if _log_active(ks, rt) else _INACTIVE_LOG_RENAME_MSG
        )
    log = _log_of(ks, rt)
    now_us = eng.now_us()
    if st.action == "add":
        for name, ty, static in st.columns:
            if d.column(name) is not None:
                raise inv(f"Invalid column name {name} because it conflicts with an existing column")
            if static and not d.clustering_key:
                raise inv(
                    "Static columns are only useful (and thus allowed) if the table has at least one "
                    "clustering column"
                )
            t = eng.catalog.resolve(ty, ks.name)
            if t.name == "counter" and not rt.is_counter:  # a configuration_exception in Scylla
                raise CqlError(
                    ErrorCode.CONFIG_ERROR,
                    f"Cannot add a counter column ({name}) in a non counter column family",
                )
            if rt.is_counter and t.name != "counter":
                raise inv("Cannot add a non counter column (" + name + ") in a counter column family")
            if t.name == "counter" and d.cdc is not None and d.cdc.enabled:
                raise inv(
                    f"Cannot create CDC log for table {ks.name}.{d.name}. Counter support not implemented"
                )
            d.columns.append(ColumnDef(name, ty, "static" if static else "regular"))
            d.dropped.pop(name, None)
    elif st.action == "drop":
        for name in st.drop:
            c = d.column(name)
            if c is None:
                raise inv(f"Column {name} was not found in table {d.name}")
            if c.kind in ("partition_key", "clustering"):
                raise inv(f"Cannot drop PRIMARY KEY part {name}")
            d.columns = [x for x in d.columns if x.name != name]
            d.dropped[name] = (c.type, now_us)
            rt.store.drop_column(name)
    elif st.action == "rename":
        for a, b in st.renames:
            c = d.column(a)
            if c is None:
                raise inv(f"Cannot rename unknown column {a} in table {d.name}")
            if c.kind not in ("partition_key", "clustering"):
                raise inv(f"Cannot rename non PRIMARY KEY column {a}")
            if d.column(b) is not None:
                raise inv(
                    f"Cannot rename column {a} to {b} in table {d.name}; another column of that name already "
                    f"exist"
                )
            d.columns = [dataclasses.replace(x, name=b) if x.name == a else x for x in d.columns]
    elif st.action == "alter":
        raise inv("Altering of types is not allowed")
    else:
        opts, cdc, ttl = _options(st.options)
        _check_tablet_options(ks, opts)
        if rt.d.is_cdc_log and cdc is not None:
            _cdc_module().log_table_def(rt.d)  # raises the nested-log error
        d.options.update(opts)
        if ttl is not None:
            d.default_ttl = ttl
        if cdc is not None:
            if cdc.enabled and rt.is_counter:
                raise inv(
                    f"Cannot create CDC log for table {ks.name}.{d.name}. Counter support not implemented"
                )
            d.cdc = cdc
    new_rt = eng.catalog.make_rt(d, rt.store)
    new_log = None
    if not d.is_cdc_log and d.cdc is not None and d.cdc.enabled:
        if log is None:
            if (d.name + "_scylla_cdc_log") in ks.tables:
                raise inv(f"{ks.name}.{d.name}_scylla_cdc_log already exists")
            new_log = _new_log(eng, ks, d)
            _new_stream_set(eng, ks, d)
        else:
            new_log = _reattach(eng, d, log, st)
    elif log is not None and st.action in ("add", "drop", "rename"):
        pass  # detached log: untouched (Scylla mirrors only into an attached log)
    if st.action == "with" and "tablets" in st.options and ks.tablets is not None:
        _resize(eng, ks, d)
    ks.tables[d.name] = new_rt
    extra = []
    if new_log is not None:
        extra.append(
            SchemaChangeResult(
                "UPDATED" if new_log.name in ks.tables else "CREATED", "TABLE", ks.name, new_log.name
            )
        )
        ks.tables[new_log.name] = new_log
    return _changed(eng, "UPDATED", "TABLE", ks.name, d.name, extra)


def _resize(eng: EmulatorEngine, ks: KeyspaceDef, d: TableDef) -> None:
    """New tablet options: the table is split or merged to the count they ask for; a CDC table
    gets a new stream set (tablets.Tablets.resize)."""
    streams = eng.tablets.get(ks.name, d.name)
    if streams is None:
        return
    count = _tablet_count(eng, ks, d)
    if count != streams.tablet_count:
        eng.tablets.resize(ks.name, d.name, count)


def _reattach(eng: EmulatorEngine, base: TableDef, log: TableRt, st: A.AlterTable) -> TableRt:
    """Recompute the log's columns from the base, keeping its id, rows and user-set properties."""
    fresh = _cdc_module().log_table_def(base)
    old = log.d
    keep = {c.name for c in fresh.columns}
    dropped = dict(old.dropped)
    now_us = eng.now_us()
    for c in old.columns:
        if c.name not in keep:
            dropped[c.name] = (c.type, now_us)
            log.store.drop_column(c.name)
    for n in keep:
        dropped.pop(n, None)
    # cdc/log.cc create_log_schema: "If the user reattaches the log table, do not change its
    # properties" (set_properties(old->get_properties())), whatever the base's ALTER was.
    opts = dict(old.options)
    d = TableDef(
        old.keyspace, old.name, fresh.columns, opts, None, True, old.default_ttl, old.table_id, dropped
    )
    return eng.catalog.make_rt(d, log.store)


# ------------------------------------------------------------------------------------- types
def _types(eng: EmulatorEngine, st: Any, ksname: str | None) -> Result:
    ks = eng.catalog.keyspace(ksname)
    _user_keyspace(eng, ks.name)
    if isinstance(st, A.CreateType):
        if st.name in ks.types:
            if st.if_not_exists:
                return VoidResult()
            raise CqlError(
                ErrorCode.ALREADY_EXISTS,
                f"A user type of name {ks.name}.{st.name} already exists",
                keyspace=ks.name,
                table=st.name,
            )
        fnames = [f for f, _ in st.fields]
        if len(set(fnames)) != len(fnames):
            raise inv(f"Duplicate field name in type {st.name}")
        for _, ty in st.fields:
            t = eng.catalog.resolve(ty, ks.name)
            if t.name == "counter":
                raise inv("A user type cannot contain counters")
            if t.name == "udt" and t.udt_name == st.name:
                raise inv(f"User type {st.name} cannot reference itself")
        ks.types[st.name] = UserTypeDef(ks.name, st.name, fnames, [t for _, t in st.fields])
        return _changed(eng, "CREATED", "TYPE", ks.name, st.name)
    if isinstance(st, A.DropType):
        if st.name not in ks.types:
            if st.if_exists:
                return VoidResult()
            raise inv(f"No user type named {st.name} exists.")
        for rt in ks.tables.values():
            for c in rt.d.columns:
                if _uses(rt.types[c.name], st.name):
                    raise inv(
                        f"Cannot drop user type {ks.name}.{st.name} as it is still used by table "
                        f"{ks.name}.{rt.name}"
                    )
        del ks.types[st.name]
        return _changed(eng, "DROPPED", "TYPE", ks.name, st.name)
    assert isinstance(st, A.AlterType)
    u = ks.types.get(st.name)
    if u is None:
        raise inv(f"No user type named {st.name} exists.")
    for f, ty in st.add:
        if f in u.field_names:
            raise inv(
                f"Cannot add new field {f} to type {ks.name}.{st.name}: a field of the same name already "
                f"exists"
            )
        eng.catalog.resolve(ty, ks.name)
        u.field_names.append(f)
        u.field_types.append(ty)
    for a, b in st.renames:
        if a not in u.field_names:
            raise inv(f"Unkown field {a} in type {ks.name}.{st.name}")
        u.field_names[u.field_names.index(a)] = b
    # re-resolve types and re-shape stored frozen UDT values
    res = _changed(eng, "UPDATED", "TYPE", ks.name, st.name)
    for rt in ks.tables.values():
        for c in rt.d.columns:
            t = rt.types[c.name]
            if _uses(t, st.name) and not t.multicell:
                _renormalize(rt, c.name, t)
    return res


def _uses(t: Any, udt: str) -> bool:
    if t.name == "udt" and t.udt_name == udt:
        return True
    return any(_uses(p, udt) for p in t.params)


def _renormalize(rt: TableRt, name: str, t: Any) -> None:
    for p in rt.store.partitions.values():
        rows = list(p.rows.values()) + ([p.static] if p.static is not None else [])
        for r in rows:
            c = r.cells.get(name)
            if c is not None and getattr(c, "value", None) is not None:
                c.value = normalize(c.value, t)

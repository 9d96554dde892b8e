"""Shared data model of the Scylla CDC emulator.

The emulator is split the way Scylla itself is split:

* ``engine`` parses CQL, keeps the catalog and storage, and turns every write (statement or batch)
  into a list of ``PartitionMutation`` (cells with timestamps, tombstones, TTLs) -- exactly what a
  Scylla coordinator hands to ``cdc::augment_mutation_call``;
* ``cdc`` turns those base mutations (plus a pre-image read) into log-table mutations, following
  shared/docs/scylla-cdc.md §2-§4, and owns streams/generations;
* the engine applies base and log mutations to storage atomically (one node, one thread);
* ``protocol`` speaks CQL native protocol v4 and calls the engine through ``api.Engine``.

Values inside this model are Python values as the driver's ``cassandra.cqltypes`` classes
serialize/deserialize them (int, str, Decimal, uuid.UUID, datetime, cassandra.util.Date/Time/Duration,
bytes, tuples, ...). Timestamps are microseconds since the Unix epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AtomicCell",
    "CdcTableOptions",
    "CollectionMutation",
    "ColumnDef",
    "PartitionMutation",
    "RangeTombstone",
    "RowMutation",
    "TableDef",
]

ColumnKind = Literal["partition_key", "clustering", "static", "regular"]


@dataclass(frozen=True)
class CdcTableOptions:
    """``WITH cdc = {...}`` (shared/docs/scylla-cdc.md §3.1). ``preimage`` is 'false'|'true'|'full'."""

    enabled: bool = False
    preimage: str = "false"
    postimage: bool = False
    delta: str = "full"
    ttl: int = 86400


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: str  # CQL type text, lower-case keywords, UDTs by bare name: "frozen<map<int, text>>", "ut"
    kind: ColumnKind
    position: int = 0  # index within partition key / clustering key; 0 otherwise
    clustering_order: Literal["asc", "desc"] = "asc"


@dataclass
class TableDef:
    keyspace: str
    name: str
    columns: list[ColumnDef]  # partition key cols, clustering cols (in position order), then others
    options: dict[str, Any] = field(default_factory=dict)  # other WITH options, CQL-literal values
    cdc: CdcTableOptions | None = None  # None: never set (extension absent)
    is_cdc_log: bool = False  # this table is <base>_scylla_cdc_log
    default_ttl: int = 0
    table_id: Any = None  # uuid.UUID, set by the catalog
    # Columns dropped with their drop time (µs); a dropped column's data is invisible.
    dropped: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def partition_key(self) -> list[ColumnDef]:
        return sorted((c for c in self.columns if c.kind == "partition_key"), key=lambda c: c.position)

    @property
    def clustering_key(self) -> list[ColumnDef]:
        return sorted((c for c in self.columns if c.kind == "clustering"), key=lambda c: c.position)

    @property
    def static_columns(self) -> list[ColumnDef]:
        return [c for c in self.columns if c.kind == "static"]

    @property
    def regular_columns(self) -> list[ColumnDef]:
        return [c for c in self.columns if c.kind == "regular"]

    def column(self, name: str) -> ColumnDef | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    def copy(self) -> TableDef:
        return dataclasses.replace(
            self, columns=list(self.columns), options=dict(self.options), dropped=dict(self.dropped)
        )


@dataclass(slots=True)
class AtomicCell:
    """One cell. ``value is None`` and ``live is False`` is a tombstone (the cell set to null)."""

    ts: int
    value: Any = None
    live: bool = True
    ttl: int | None = None  # seconds, live cells only
    expiry: int | None = None  # absolute expiry time in µs since epoch (ts-independent), live cells only


@dataclass
class CollectionMutation:
    """Change to a non-frozen list/set/map/UDT column.

    ``tombstone_ts``: collection-wide tombstone (``SET c = ...``/``SET c = null``/INSERT use T-1,
    ``DELETE c`` uses T; shared/docs/scylla-cdc.md §1.3). ``cells``: (cell key, cell) pairs where the
    key is the map key / set element / list timeuuid / UDT field index, and the cell's value is the
    element value (``None`` for sets) or a tombstone (``live=False``) for a removed element.
    """

    tombstone_ts: int | None = None
    cells: list[tuple[Any, AtomicCell]] = field(default_factory=list)


@dataclass
class RowMutation:
    """Change to one row. ``clustering is None`` means the static row."""

    clustering: tuple[Any, ...] | None
    marker: AtomicCell | None = None  # live row marker (INSERT); carries the INSERT's TTL
    row_tombstone_ts: int | None = None  # row DELETE
    cells: dict[str, AtomicCell | CollectionMutation] = field(default_factory=dict)


@dataclass
class RangeTombstone:
    """Clustering range delete. Bounds are clustering prefixes; ``()`` = unbounded side."""

    start: tuple[Any, ...]
    start_inclusive: bool
    end: tuple[Any, ...]
    end_inclusive: bool
    ts: int


@dataclass
class PartitionMutation:
    """Everything one statement or batch does to one partition of one table."""

    keyspace: str
    table: str
    partition_key: tuple[Any, ...]  # values in partition-key column order
    token: int  # Murmur3 token of the serialized partition key
    partition_tombstone_ts: int | None = None
    static_row: RowMutation | None = None
    rows: list[RowMutation] = field(default_factory=list)
    range_tombstones: list[RangeTombstone] = field(default_factory=list)
    system_originated: bool = False  # per-row TTL expiry etc. (ops -3/-4)

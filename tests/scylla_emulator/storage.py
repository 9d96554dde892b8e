"""In-memory storage with Cassandra cell semantics.

Per table (``TableStore``): partitions ordered by (token, serialized key); per partition: partition
tombstone, static row, clustering rows ordered by a type-aware sort key (kept as a sorted key list +
dict so slices are found by bisection), range tombstones. Cells are ``model.AtomicCell`` (last write
wins, a tombstone wins ties; a TTL'd cell carries an absolute ``expiry`` in µs). Non-frozen
collections/UDTs are ``CollCells``: a collection tombstone plus cells keyed by map key / set element /
list timeuuid / UDT field index. Nothing is purged: an expired cell still shadows older writes.

``apply(store, mutation, now_us)`` merges a ``PartitionMutation``; readers use ``Partition.slice`` and
``row_live_values``. Timestamps are µs; ``NO_TS`` marks "no tombstone".
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from tests.scylla_emulator.model import AtomicCell, CollectionMutation, PartitionMutation, RowMutation

__all__ = [
    "MAX", "NO_TS", "CollCells", "Desc", "Partition", "Row", "TableStore", "apply", "apply_row",
    "merge_atomic_row", "new_row", "partition_of",
]  # fmt: skip

NO_TS = -(1 << 63)


class _Max:
    """Sorts after everything (upper bound for clustering-prefix slices)."""

    __slots__ = ()

    def __lt__(self, o: Any) -> bool:
        return False

    def __le__(self, o: Any) -> bool:
        return o is self

    def __gt__(self, o: Any) -> bool:
        return o is not self

    def __ge__(self, o: Any) -> bool:
        return True

    def __eq__(self, o: object) -> bool:
        return o is self

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "MAX"


MAX: Any = _Max()


class Desc:
    """Reverses the order of a sort-key component (``CLUSTERING ORDER BY (c DESC)``)."""

    __slots__ = ("k",)

    def __init__(self, k: Any) -> None:
        self.k = k

    def __lt__(self, o: Any) -> bool:
        if o is MAX:
            return True
        return bool(o.k < self.k)

    def __gt__(self, o: Any) -> bool:
        if o is MAX:
            return False
        return bool(o.k > self.k)

    def __le__(self, o: Any) -> bool:
        return not self.__gt__(o)

    def __ge__(self, o: Any) -> bool:
        return not self.__lt__(o)

    def __eq__(self, o: object) -> bool:
        return isinstance(o, Desc) and o.k == self.k

    def __hash__(self) -> int:
        return hash(self.k)

    def __repr__(self) -> str:
        return f"Desc({self.k!r})"


class CollCells:
    __slots__ = ("cells", "tomb")

    def __init__(self) -> None:
        self.tomb = NO_TS
        self.cells: dict[Any, AtomicCell] = {}


class Row:
    __slots__ = ("cells", "ck", "marker", "tomb")

    def __init__(self, ck: tuple[Any, ...] | None) -> None:
        self.ck = ck
        self.marker: AtomicCell | None = None
        self.tomb = NO_TS
        self.cells: dict[str, Any] = {}  # name -> AtomicCell | CollCells


class Partition:
    __slots__ = ("keys", "pk", "pkbytes", "rowlist", "rows", "rts", "static", "token", "tomb")

    def __init__(self, pk: tuple[Any, ...], token: int, pkbytes: bytes) -> None:
        self.pk = pk
        self.token = token
        self.pkbytes = pkbytes
        self.tomb = NO_TS
        self.static: Row | None = None
        self.rows: dict[Any, Row] = {}
        self.keys: list[Any] = []  # sorted sort keys of self.rows
        self.rowlist: list[Row] = []  # the rows in ``keys`` order (rowlist[i] is rows[keys[i]])
        self.rts: list[tuple[tuple[Any, ...], bool, tuple[Any, ...], bool, int]] = []

    def slice(
        self, lo: tuple[Any, ...] | None, lo_incl: bool, hi: tuple[Any, ...] | None, hi_incl: bool
    ) -> tuple[int, int]:
        """Index range of ``keys`` between two clustering-prefix sort keys (None = unbounded)."""
        keys = self.keys
        if lo is None or not lo:
            a = 0
        elif lo_incl:
            a = bisect.bisect_left(keys, lo)
        else:
            a = bisect.bisect_left(keys, (*lo, MAX))
        if hi is None or not hi:
            b = len(keys)
        elif hi_incl:
            b = bisect.bisect_left(keys, (*hi, MAX))
        else:
            b = bisect.bisect_left(keys, hi)
        return a, max(a, b)

    def deletion_for(self, key: Any, row: Row) -> int:
        """Max of partition, row and covering range tombstone timestamps for a clustering row."""
        d = self.tomb
        d = max(d, row.tomb)
        for s, si, e, ei, ts in self.rts:
            if ts <= d:
                continue
            if s:
                p = key[: len(s)]
                if p < s or (not si and p == s):
                    continue
            if e:
                p = key[: len(e)]
                if p > e or (not ei and p == e):
                    continue
            d = ts
        return d


class TableStore:
    """All partitions of one table, keyed by serialized partition key; ``order`` is the sorted list
    of (token, pkbytes)."""

    __slots__ = ("order", "partitions")

    def __init__(self) -> None:
        self.partitions: dict[bytes, Partition] = {}
        self.order: list[tuple[int, bytes]] = []

    def get_or_create(self, pk: tuple[Any, ...], token: int, pkbytes: bytes) -> Partition:
        p = self.partitions.get(pkbytes)
        if p is None:
            p = Partition(pk, token, pkbytes)
            self.partitions[pkbytes] = p
            entry = (token, pkbytes)
            order = self.order
            if not order or order[-1] < entry:
                order.append(entry)
            else:
                bisect.insort(order, entry)
        return p

    def iter_from(
        self,
        token: int | None = None,
        pkbytes: bytes = b"",
        inclusive: bool = True,
        end_token: int | None = None,
        end_inclusive: bool = True,
    ) -> Iterator[Partition]:
        """Partitions in ring order from (token, pkbytes) up to ``end_token``."""
        order = self.order
        if token is None:
            i = 0
        elif inclusive:
            i = bisect.bisect_left(order, (token, pkbytes))
        else:
            i = bisect.bisect_right(order, (token, pkbytes))
        parts = self.partitions
        n = len(order)
        while i < n:
            tok, pkb = order[i]
            if end_token is not None and (tok > end_token or (tok == end_token and not end_inclusive)):
                return
            yield parts[pkb]
            i += 1

    def clear(self) -> None:
        self.partitions.clear()
        self.order.clear()

    def drop_column(self, name: str) -> None:
        for p in self.partitions.values():
            if p.static is not None:
                p.static.cells.pop(name, None)
            for r in p.rows.values():
                r.cells.pop(name, None)


# ------------------------------------------------------------------------------------ writes
def _fix_expiry(c: AtomicCell, now_us: int) -> None:
    if c.ttl and c.expiry is None and c.live:
        c.expiry = now_us + c.ttl * 1_000_000


def _merge_atomic(old: AtomicCell | None, new: AtomicCell) -> AtomicCell:
    if old is None or new.ts > old.ts:
        return new
    if new.ts < old.ts:
        return old
    if not old.live:
        return old
    if not new.live:
        return new
    oe, ne = old.expiry, new.expiry
    if oe is not None and (ne is None or ne > oe):
        return new
    return new if oe is None and ne is None else old


def apply_row(row: Row, rm: RowMutation, now_us: int) -> None:
    """Merge a row mutation into a stored row (TTL'd cells get their expiry from ``now_us``)."""
    if rm.row_tombstone_ts is not None and rm.row_tombstone_ts > row.tomb:
        row.tomb = rm.row_tombstone_ts
    if rm.marker is not None:
        _fix_expiry(rm.marker, now_us)
        row.marker = _merge_atomic(row.marker, rm.marker)
    cells = row.cells
    for name, c in rm.cells.items():
        if type(c) is AtomicCell:
            if c.ttl:
                _fix_expiry(c, now_us)
            old = cells.get(name)
            if old is None:
                cells[name] = c
            else:
                cells[name] = _merge_atomic(old, c)
        else:
            assert isinstance(c, CollectionMutation)
            cc = cells.get(name)
            if not isinstance(cc, CollCells):
                cc = CollCells()
                cells[name] = cc
            if c.tombstone_ts is not None and c.tombstone_ts > cc.tomb:
                cc.tomb = c.tombstone_ts
            d = cc.cells
            for key, cell in c.cells:
                _fix_expiry(cell, now_us)
                d[key] = _merge_atomic(d.get(key), cell)


def partition_of(
    store: TableStore, pk: tuple[Any, ...], pkbytes: bytes, token_of: Callable[[tuple[Any, ...], bytes], int]
) -> Partition:
    """The partition with serialized key ``pkbytes``, created (token from ``token_of``) if missing."""
    p = store.partitions.get(pkbytes)
    if p is None:
        p = store.get_or_create(pk, token_of(pk, pkbytes), pkbytes)
    return p


def new_row(p: Partition, k: Any, ck: tuple[Any, ...]) -> Row | None:
    """A new empty clustering row at sort key ``k`` in ``p``, or None if ``p`` already has one
    (callers then merge with ``apply_row``)."""
    rows = p.rows
    if k in rows:
        return None
    row = Row(ck)
    rows[k] = row
    keys = p.keys
    if not keys or keys[-1] < k:
        keys.append(k)
        p.rowlist.append(row)
    else:
        i = bisect.bisect_left(keys, k)
        keys.insert(i, k)
        p.rowlist.insert(i, row)
    return row


def merge_atomic_row(row: Row, marker: AtomicCell | None, cells: dict[str, AtomicCell], now_us: int) -> None:
    """``apply_row`` for a row mutation with only a marker and atomic cells (no tombstone)."""
    if marker is not None:
        _fix_expiry(marker, now_us)
        row.marker = _merge_atomic(row.marker, marker)
    dst = row.cells
    for name, c in cells.items():
        if c.ttl:
            _fix_expiry(c, now_us)
        old = dst.get(name)
        dst[name] = c if old is None else _merge_atomic(old, c)


def apply(  # noqa: PLR0917
    store: TableStore,
    m: PartitionMutation,
    pkbytes: bytes,
    token_of: Callable[[tuple[Any, ...], bytes], int],
    ck_key: Callable[[tuple[Any, ...]], Any],
    prefix_key: Callable[[tuple[Any, ...]], Any],
    now_us: int,
) -> None:
    """Merge one partition mutation into ``store``; ``pkbytes`` is its serialized partition key,
    ``token_of(pk, pkbytes)`` is only called when the partition is new."""
    p = partition_of(store, m.partition_key, pkbytes, token_of)
    if m.partition_tombstone_ts is not None and m.partition_tombstone_ts > p.tomb:
        p.tomb = m.partition_tombstone_ts
    if m.static_row is not None:
        if p.static is None:
            p.static = Row(None)
        apply_row(p.static, m.static_row, now_us)
    rows = p.rows
    for rm in m.rows:
        ck = rm.clustering
        assert ck is not None
        k = ck_key(ck)
        row = rows.get(k)
        if row is None:
            row = new_row(p, k, ck)
            assert row is not None
        apply_row(row, rm, now_us)
    for rt in m.range_tombstones:
        entry = (prefix_key(rt.start), rt.start_inclusive, prefix_key(rt.end), rt.end_inclusive, rt.ts)
        if entry not in p.rts:
            p.rts.append(entry)


# ------------------------------------------------------------------------------------- reads
def live_cells(cc: CollCells, dts: int, now_us: int) -> list[tuple[Any, Any]]:
    """Live (key, value) cells of a collection, unsorted."""
    eff = cc.tomb if cc.tomb > dts else dts
    return [
        (k, c.value)
        for k, c in cc.cells.items()
        if c.live and c.ts > eff and (c.expiry is None or c.expiry > now_us)
    ]


def row_is_live(row: Row, dts: int, now_us: int) -> bool:
    m = row.marker
    if m is not None and m.live and m.ts > dts and (m.expiry is None or m.expiry > now_us):
        return True
    for c in row.cells.values():
        if type(c) is AtomicCell:
            if c.live and c.ts > dts and (c.expiry is None or c.expiry > now_us):
                return True
        elif live_cells(c, dts, now_us):
            return True
    return False

"""Splitting one base partition mutation into CDC changes (port of Scylla's ``cdc/split.cc``).

``should_split`` decides whether a mutation is logged as one group or split per timestamp;
``extract`` buckets its changes by timestamp and, within a timestamp, by kind (static updates,
clustered inserts, clustered updates, row deletes, range deletes, partition delete), each kind in
clustering-row order and then by TTL with "no TTL" (0) first. A collection tombstone at t is a change
at t + 1 (shared/docs/scylla-cdc.md §1.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .model import AtomicCell, CollectionMutation, PartitionMutation, RangeTombstone, RowMutation

__all__ = [
    "Batch",
    "Entry",
    "NonAtomic",
    "extract",
    "hashable",
    "marker_live",
    "row_entries",
    "should_split",
    "ttl0",
]


def ttl0(cell: AtomicCell) -> int:
    return cell.ttl if cell.live and cell.ttl else 0


@dataclass
class NonAtomic:
    tombstone: bool = False
    cells: list[tuple[Any, AtomicCell]] = field(default_factory=list)


Entry = tuple[str, "AtomicCell | NonAtomic"]


@dataclass
class Batch:
    """All changes of one partition with one timestamp (split.cc::batch)."""

    static_updates: list[tuple[int, list[Entry]]] = field(default_factory=list)
    inserts: list[tuple[int, tuple[Any, ...], AtomicCell, list[Entry]]] = field(default_factory=list)
    updates: list[tuple[int, tuple[Any, ...], list[Entry]]] = field(default_factory=list)
    row_deletes: list[tuple[Any, ...]] = field(default_factory=list)
    range_deletes: list[RangeTombstone] = field(default_factory=list)
    partition_delete: bool = False


def _bucket_cells(cells: dict[str, AtomicCell | CollectionMutation]) -> dict[tuple[int, int], list[Entry]]:
    """split.cc::extract_row_visitor: cells by (timestamp, ttl); a collection tombstone at t counts
    as (t + 1, no ttl)."""
    buckets: dict[tuple[int, int], list[Entry]] = {}

    def nonatomic(key: tuple[int, int], name: str) -> NonAtomic:
        entries = buckets.setdefault(key, [])
        if not entries or entries[-1][0] != name or not isinstance(entries[-1][1], NonAtomic):
            entries.append((name, NonAtomic()))
        last = entries[-1][1]
        assert isinstance(last, NonAtomic)
        return last

    for name in sorted(cells, key=lambda n: n.encode()):
        c = cells[name]
        if isinstance(c, AtomicCell):
            buckets.setdefault((c.ts, ttl0(c)), []).append((name, c))
            continue
        if c.tombstone_ts is not None:
            nonatomic((c.tombstone_ts + 1, 0), name).tombstone = True
        for key, cell in c.cells:
            nonatomic((cell.ts, ttl0(cell)), name).cells.append((key, cell))
    return buckets


def row_entries(cells: dict[str, AtomicCell | CollectionMutation]) -> list[Entry]:
    out: list[Entry] = []
    for name in sorted(cells, key=lambda n: n.encode()):
        c = cells[name]
        if isinstance(c, AtomicCell):
            out.append((name, c))
        else:
            out.append((name, NonAtomic(c.tombstone_ts is not None, list(c.cells))))
    return out


def marker_live(row: RowMutation) -> bool:
    return row.marker is not None and row.marker.live


class _Stop(Exception):
    pass


def should_split(pm: PartitionMutation, rows: list[RowMutation]) -> bool:
    """split.cc::should_split_visitor."""
    st: dict[str, Any] = {"ts": None, "ttl": None, "static": False, "clustered": False, "upsert": False,
                          "marker": False, "range": False}  # fmt: skip

    def visit(ts: int, ttl: int = 0) -> None:
        if st["ts"] is not None and st["ts"] != ts:
            raise _Stop
        st["ts"] = ts
        if st["ttl"] is not None and st["ttl"] != ttl:
            raise _Stop
        st["ttl"] = ttl

    def visit_cells(cells: dict[str, AtomicCell | CollectionMutation]) -> None:
        for name in sorted(cells, key=lambda n: n.encode()):
            c = cells[name]
            if isinstance(c, AtomicCell):
                visit(c.ts, ttl0(c))
                continue
            if c.tombstone_ts is not None:
                visit(c.tombstone_ts + 1)
            for _k, cell in c.cells:
                if cell.live and st["marker"]:
                    raise _Stop  # nonatomic updates cannot be expressed with an INSERT
                visit(cell.ts, ttl0(cell))

    try:
        if pm.static_row is not None and pm.static_row.cells:
            st["static"] = True
            visit_cells(pm.static_row.cells)
        for row in rows:
            if marker_live(row) or row.cells:
                if st["static"]:
                    raise _Stop
                st["clustered"] = st["upsert"] = True
                if marker_live(row):
                    assert row.marker is not None
                    st["marker"] = True
                    visit(row.marker.ts, ttl0(row.marker))
                visit_cells(row.cells)
            if row.row_tombstone_ts is not None:
                if st["static"] or st["upsert"]:
                    raise _Stop
                st["clustered"] = True
                visit(row.row_tombstone_ts)
        for rt in pm.range_tombstones:
            if st["static"] or st["clustered"]:
                raise _Stop
            st["range"] = True
            visit(rt.ts)
        if pm.partition_tombstone_ts is not None and (st["range"] or st["static"] or st["clustered"]):
            raise _Stop
    except _Stop:
        return True
    return st["ts"] is None


def extract(rows: list[RowMutation], pm: PartitionMutation) -> dict[int, Batch]:
    """split.cc::extract_changes."""
    res: dict[int, Batch] = {}
    if pm.static_row is not None and pm.static_row.cells:
        for (ts, ttl), entries in sorted(_bucket_cells(pm.static_row.cells).items()):
            res.setdefault(ts, Batch()).static_updates.append((ttl, entries))
    for row in rows:
        ck = row.clustering
        assert ck is not None
        if marker_live(row) or row.cells:
            buckets = _bucket_cells(row.cells)
            mkey = None
            if marker_live(row):
                assert row.marker is not None
                mkey = (row.marker.ts, ttl0(row.marker))
                buckets.setdefault(mkey, [])
            for (ts, ttl), entries in sorted(buckets.items()):
                batch = res.setdefault(ts, Batch())
                if (ts, ttl) == mkey:
                    assert row.marker is not None
                    ins: list[Entry] = [e for e in entries if isinstance(e[1], AtomicCell)]
                    upd: list[Entry] = []
                    for e in entries:
                        if isinstance(e[1], NonAtomic):
                            (ins if e[1].tombstone else upd).append(e)
                    batch.inserts.append((ttl, ck, row.marker, sorted(ins, key=lambda e: e[0].encode())))
                    if upd:
                        batch.updates.append((ttl, ck, upd))
                else:
                    batch.updates.append((ttl, ck, entries))
        if row.row_tombstone_ts is not None:
            res.setdefault(row.row_tombstone_ts, Batch()).row_deletes.append(ck)
    for rt in pm.range_tombstones:
        res.setdefault(rt.ts, Batch()).range_deletes.append(rt)
    if pm.partition_tombstone_ts is not None:
        res.setdefault(pm.partition_tombstone_ts, Batch()).partition_delete = True
    return res


def hashable(v: Any) -> Any:
    """A hashable form of a clustering value (frozen collections arrive as lists/dicts/sets)."""
    if isinstance(v, list | tuple):
        return tuple(hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple((hashable(k), hashable(x)) for k, x in v.items())
    if isinstance(v, set | frozenset):
        return frozenset(hashable(x) for x in v)
    return v

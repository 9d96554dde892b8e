"""Version guards and per-event write outcomes shared by the sinks (R-22).

Strategy per table (``[[tables]] staleness``, ``TableMapping.staleness``):

* ``"timestamp"`` (default): an event applies when its (write time, batch seq) is newer than the
  row's; the same = a replay (``duplicate``); older = ``stale``.
* ``"version"``: the source column ``version_column`` decides: a lower version is ``stale``, a
  higher one applies whatever its write time. Equal versions (or an event/row without a version:
  a partial update that does not carry the column keeps the row's version) apply too, except the
  replay of the very event the row holds (same write time and batch seq: ``duplicate``).
* ``"hybrid"``: the version first, then (write time, batch seq) on ties, as ``"timestamp"``.

Deletes carry no version: they are guarded by write time in every strategy.

A sink folds several events of one row into one write; an event it skips is reported per event
(``Skipped``): ``duplicate`` when the row already holds the version the event's fold ends with (a
replay of the batch, however many events it folded), else ``stale`` with the row's write time and
version, which the pipeline records in the staleness audit.

``in_batch`` applies the version/hybrid guard between the events of one batch before a sink folds
them (a fold keeps the last event of a row, which is only right when versions grow with the
stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdcd.errors import SchemaMismatch
from cdcd.events import ChangeEvent, Op
from cdcd.schema import TableSchema
from cdcd.sinks import Skipped, TableMapping

__all__ = ["check_version_column", "compare", "in_batch", "version_column", "version_of"]

_UPSERTS = (Op.INSERT, Op.UPDATE)
_ORDERABLE = frozenset(
    {"tinyint", "smallint", "int", "bigint", "varint", "decimal", "float", "double", "timestamp", "date",
     "time", "ascii", "text", "varchar", "counter"}
)  # fmt: skip


def version_column(mapping: TableMapping) -> str | None:
    """The column whose value versions rows, or None for the timestamp strategy."""
    return None if mapping.staleness == "timestamp" else mapping.version_column


def check_version_column(mapping: TableMapping, schema: TableSchema) -> None:
    """The version column exists, is a regular (not key, not static) column and orders simply;
    raises ``SchemaMismatch`` naming the key otherwise."""
    name = version_column(mapping)
    if name is None:
        return
    key = f"tables.{mapping.source}.version_column"
    col = next((c for c in schema.columns if c.name == name), None)
    if col is None:
        raise SchemaMismatch(f"{key}: {mapping.source} has no column {name!r}")
    if col.kind != "regular":
        raise SchemaMismatch(f"{key}: {name!r} is a {col.kind} column; expected a regular column")
    if col.type.name not in _ORDERABLE:
        raise SchemaMismatch(
            f"{key}: {name!r} is {col.type.name}; expected a number, text, timestamp, date or time column"
        )


def version_of(ev: ChangeEvent, column: str | None) -> Any:
    """The version an event carries (None: none, it keeps the row's)."""
    if column is None:
        return None
    return ev.values.get(column)


def compare(strategy: str, ev: tuple[Any, int, int], row: tuple[Any, int, int]) -> int:
    """> 0: the event applies over the row; 0: it is the row's own version (duplicate); < 0: stale.
    ``ev``/``row`` are (version or None, write time µs, batch seq)."""
    ev_v, ev_t = ev[0], (ev[1], ev[2])
    row_v, row_t = row[0], (row[1], row[2])
    if strategy != "timestamp" and ev_v is not None and row_v is not None and ev_v != row_v:
        return 1 if ev_v > row_v else -1
    if ev_t == row_t:
        return 0
    if strategy == "version":
        return 1
    return 1 if ev_t > row_t else -1


def _row_of(ev: ChangeEvent) -> str:
    return f"{ev.static}:{sorted(ev.key.items())!r}"


def in_batch(
    events: Sequence[ChangeEvent], strategy: str, column: str | None
) -> tuple[list[int], list[Skipped]]:
    """Indices of the events to fold, and the events an earlier event of the same batch outranks
    (version/hybrid strategies; the timestamp strategy keeps every event: the sinks' folds order by
    write time themselves)."""
    if column is None or strategy == "timestamp":
        return list(range(len(events))), []
    keep: list[int] = []
    skipped: list[Skipped] = []
    rows: dict[str, tuple[Any, int, int]] = {}
    for i, ev in enumerate(events):
        if ev.op not in _UPSERTS:
            if ev.op in (Op.ROW_DELETE, Op.SERVICE_ROW_DELETE):
                rows.pop(_row_of(ev), None)
            else:
                rows.clear()  # partition/range delete: rows of the partition start over
            keep.append(i)
            continue
        k = _row_of(ev)
        prev = rows.get(k)
        v = version_of(ev, column)
        if prev is not None:
            mine = (prev[0] if v is None else v, ev.write_time_us, ev.batch_seq)
            c = compare(strategy, mine, prev)
            if c <= 0:
                skipped.append(
                    Skipped(
                        i, "duplicate" if c == 0 else "stale", row_write_time_us=prev[1], row_version=prev[0]
                    )
                )
                continue
            v = mine[0]
        rows[k] = (v, ev.write_time_us, ev.batch_seq)
        keep.append(i)
    return keep, skipped

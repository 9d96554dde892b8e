"""Optional LRU cache of the rows the ClickHouse sink last wrote (``row_cache_rows``, default 0 = off).

Every partial change needs the current full row, which costs a read-back query per batch
(``SELECT .. WHERE key IN ..``). When the same keys change again soon (hot rows), the row this sink
just inserted IS the stored state, so it can be taken from memory instead.

Contract (what makes a cached row true):

* an entry is exactly the record this process inserted last for that key (the newest version in
  ClickHouse, as ``read_sql`` would return it), stored only after the whole batch's inserts
  succeeded;
* any failure while inserting clears the table's cache (the outcome is unknown);
* nothing else writes these keys meanwhile. cdcd keeps one writer per key (per-key order, one
  lease per stream group), but when a stream group's lease moves to another replica and comes back,
  the other replica's writes are unknown here: the owner of leases must call
  ``ClickHouseSink.forget()`` when a group is (re)assigned, or the cache must stay off with
  several replicas. This is why it is off by default.

Partition and range deletes always read ClickHouse (a cache cannot know every row of a partition).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["RowCache"]


class RowCache:
    """LRU map ``(static, hashed key) -> record`` (physical column -> value, ClickHouse value space).
    Records are shared, never mutated: callers copy what they change."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("RowCache capacity must be positive")
        self.capacity = capacity
        self._rows: OrderedDict[tuple[bool, Any], dict[str, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, static: bool, hkey: Any) -> dict[str, Any] | None:
        rec = self._rows.get((static, hkey))
        if rec is None:
            self.misses += 1
            return None
        self._rows.move_to_end((static, hkey))
        self.hits += 1
        return rec

    def put(self, static: bool, hkey: Any, record: dict[str, Any]) -> None:
        rows = self._rows
        rows[(static, hkey)] = record
        rows.move_to_end((static, hkey))
        while len(rows) > self.capacity:
            rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()

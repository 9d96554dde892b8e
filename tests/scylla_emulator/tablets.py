"""CDC stream sets of tablet keyspaces (shared/docs/scylla-cdc.md §4.2, §4.5).

Checked against scylladb ``f4a4091ca28e``:

* One stream set per CDC table, created with the log table (``cdc/log.cc::
  on_before_allocate_tablet_map``) at ``now - generation_leeway`` (5 s) so writes work at once.
  One stream per tablet: ``stream_id(tablet_map.get_last_token(tid), 0)`` (``cdc/generation.cc::
  create_table_streams_mutation``), i.e. token = the tablet's last token, vnode index 0, version 1,
  38 fresh random bits. Tablet counts are powers of two with equal ranges, so tablet ``i`` of ``n``
  ends at token ``-2**63 + (i + 1) * 2**64 / n - 1``.
* Routing (``cdc/metadata.cc::get_tablet_stream``): the newest set whose timestamp is <= the write
  timestamp, then the first stream with ``token >= t``. Only the "from the future" check applies;
  a write before the oldest set fails with "could not find any CDC streams for table ...".
* Split or merge (``generation.cc::generate_tablet_resize_update``): a new set for the table at
  ``max(now + 2 * ring_delay + leeway, previous + 1 ms)`` (``new_generation_timestamp``; no delay
  at all when ring_delay is 0); ``metadata.cc::generate_stream_diff`` compares sets by token and id,
  so since every new id has new random bits, every old stream is closed and every new one opened.
* ``system.cdc_timestamps`` / ``system.cdc_streams`` (``db/virtual_tables.cc``) list, per base
  table, every set timestamp, and per timestamp the current streams (state 0), the closed ones (1)
  and the opened ones (2); the first set lists all its streams as 0 and 2. Dropping the base table
  (or its keyspace) drops its sets (``make_drop_table_streams_mutations``); disabling CDC keeps the
  log table and so its sets.
* Garbage collection of sets older than the cdc ttl is not emulated (sets are kept).
"""

from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

from .api import CqlError, ErrorCode
from .generations import _FUTURE, GENERATION_LEEWAY_US, format_timestamp, make_stream_id, stream_token

__all__ = ["StreamSet", "TableStreams", "TabletRouter", "Tablets", "tablet_count_for", "tablet_last_tokens"]

_MIN_TOKEN = -(2**63)
_NO_STREAMS = "cdc::metadata::get_stream: could not find any CDC streams for table {} for timestamp {}."
_NO_TABLE = "cdc::metadata::get_stream: could not find stream metadata for table {}."


def _pow2_ceil(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pow2_floor(n: int) -> int:
    return 1 if n <= 1 else 1 << (n.bit_length() - 1)


def tablet_last_tokens(count: int) -> list[int]:
    """Last token of each of ``count`` (a power of two) equal tablets, ascending."""
    if count < 1 or count & (count - 1):
        raise ValueError(f"tablet count must be a power of two >= 1, got {count}")
    step = 2**64 // count
    return [_MIN_TOKEN + (i + 1) * step - 1 for i in range(count)]


def tablet_count_for(options: dict[str, str] | None, default: int) -> int:
    """The tablet count the emulated load balancer settles on for a table: ``min_tablet_count``
    rounded up to a power of two (a small table is merged down to it, a larger minimum splits it),
    capped by ``max_tablet_count`` rounded down; ``default`` when neither is set."""
    count = _pow2_ceil(default)
    opts = options or {}
    if "min_tablet_count" in opts and int(opts["min_tablet_count"]) > 0:
        count = _pow2_ceil(int(opts["min_tablet_count"]))
    if "max_tablet_count" in opts and int(opts["max_tablet_count"]) > 0:
        count = min(count, _pow2_floor(int(opts["max_tablet_count"])))
    return count


@dataclass(frozen=True)
class StreamSet:
    timestamp_ms: int
    streams: tuple[bytes, ...]  # sorted by token (one per tablet)
    tokens: tuple[int, ...]
    closed: tuple[bytes, ...]
    opened: tuple[bytes, ...]


@dataclass
class TableStreams:
    keyspace: str
    table: str  # the base table
    sets: list[StreamSet] = field(default_factory=list)

    @property
    def tablet_count(self) -> int:
        return len(self.sets[-1].streams)


class TabletRouter:
    """``StreamRouter``'s interface (``stream_for``, ``stream_at``, ``token``) for one table."""

    def __init__(self, table: TableStreams, now_ms: Callable[[], int]) -> None:
        self.table = table
        self._now_ms = now_ms

    def stream_for(self, token: int, ts_us: int) -> bytes:
        return self.stream_at(token, ts_us, self._now_ms())

    def stream_at(self, token: int, ts_us: int, now_ms: int) -> bytes:
        now = now_ms * 1000
        if ts_us > now + GENERATION_LEEWAY_US:
            raise CqlError(ErrorCode.INVALID, _FUTURE.format(format_timestamp(ts_us), format_timestamp(now)))
        sets = self.table.sets
        i = bisect_right([s.timestamp_ms * 1000 for s in sets], ts_us)
        if not i:
            name = f"{self.table.keyspace}.{self.table.table}"
            raise CqlError(ErrorCode.SERVER_ERROR, _NO_STREAMS.format(name, ts_us))
        chosen = sets[i - 1]
        j = bisect_left(chosen.tokens, token)
        return chosen.streams[j if j < len(chosen.tokens) else 0]

    @staticmethod
    def token(stream: bytes) -> int:
        return stream_token(stream)


class Tablets:
    """Stream sets of every CDC table of tablet keyspaces (see the module docstring)."""

    def __init__(
        self,
        *,
        now_ms: Callable[[], int],
        default_count: int = 4,
        ring_delay_ms: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        if default_count < 1:
            raise ValueError(f"default tablet count must be >= 1, got {default_count}")
        self._now_ms = now_ms
        self.default_count = default_count
        self.ring_delay_ms = ring_delay_ms
        self._rng = rng or random.Random()
        self.tables: dict[tuple[str, str], TableStreams] = {}
        self.version = 0  # bumped on every change (system tables are rebuilt from it)

    def _ids(self, count: int) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
        tokens = tablet_last_tokens(count)
        return tuple(make_stream_id(t, 0, self._rng) for t in tokens), tuple(tokens)

    def create(self, keyspace: str, table: str, count: int) -> StreamSet:
        """The first set of a table whose CDC log was just created: ``now - 5 s``."""
        streams, tokens = self._ids(_pow2_ceil(count))
        first = StreamSet(self._now_ms() - GENERATION_LEEWAY_US // 1000, streams, tokens, (), streams)
        self.tables[(keyspace, table)] = TableStreams(keyspace, table, [first])
        self.version += 1
        return first

    def resize(self, keyspace: str, table: str, count: int, delay_ms: int | None = None) -> StreamSet:
        """Publish a new set (split/merge to ``count`` tablets) operating from ``now + delay_ms``
        (default ``2 * ring_delay + 5 s``, or now when ring_delay is 0), at least 1 ms after the
        previous one. Every old stream is closed, every new one opened."""
        ts = self.tables.get((keyspace, table))
        if ts is None:
            raise KeyError(f"{keyspace}.{table} has no CDC stream set (not a CDC table of a tablet keyspace)")
        if delay_ms is None:
            delay_ms = 2 * self.ring_delay_ms + GENERATION_LEEWAY_US // 1000 if self.ring_delay_ms else 0
        prev = ts.sets[-1]
        streams, tokens = self._ids(_pow2_ceil(count))
        when = max(self._now_ms() + delay_ms, prev.timestamp_ms + 1)
        # generate_stream_diff: by token, then id; fresh random bits make every id differ.
        closed = tuple(s for s in prev.streams if s not in streams)
        opened = tuple(s for s in streams if s not in prev.streams)
        new = StreamSet(when, streams, tokens, closed, opened)
        ts.sets.append(new)
        self.version += 1
        return new

    def drop(self, keyspace: str, table: str | None = None) -> None:
        """Forget a table's sets (``table`` None: every table of the keyspace)."""
        for key in [k for k in self.tables if k[0] == keyspace and (table is None or k[1] == table)]:
            del self.tables[key]
            self.version += 1

    def get(self, keyspace: str, table: str) -> TableStreams | None:
        return self.tables.get((keyspace, table))

    def router(self, keyspace: str, table: str) -> TabletRouter | None:
        ts = self.tables.get((keyspace, table))
        return None if ts is None else TabletRouter(ts, self._now_ms)

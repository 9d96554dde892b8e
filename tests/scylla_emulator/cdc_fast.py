"""Fast path of ``cdc.CdcLog.transform`` for the common single-row write (EMU-PERF).

``fast_transform`` handles one base ``PartitionMutation`` of a table without pre/post-images that is
exactly one of

* an upsert of one clustering row: a live row marker and/or atomic cells of regular columns, all
  with one timestamp and one TTL (INSERT/UPDATE of non-collection columns; a null is a dead cell);
* a delete of one clustering row (row tombstone only);
* a partition delete (partition tombstone only),

and returns the very same log mutation as the general ``cdc._Transformer`` (same cells, values,
timestamps, TTLs and expiries, in the same insertion order; the same single ``rng.getrandbits(64)``
draw for ``cdc$time`` and the same clock reads). For anything else it returns ``None`` *before* any
side effect, and the caller takes the general path. ``tests/emulator/test_bulk_equivalence.py``
checks both paths against each other.

``StreamRouter.stream_for`` is ``Generations.stream_for`` with the generation/range lookup tables
cached (rebuilt whenever a generation is added); out of the +-5 s leeway band it defers to
``Generations.stream_for`` itself, so errors ("from the future"/"from the past") are unchanged.
"""

from __future__ import annotations

import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from .cdc_split import ttl0
from .cdctypes import collection_kind, split_type
from .generations import GENERATION_LEEWAY_US, Generations, stream_token
from .model import AtomicCell, PartitionMutation, RowMutation, TableDef

__all__ = [
    "Op",
    "StreamRouter",
    "TablePlan",
    "entries_of",
    "fast_transform",
    "log_key",
    "log_row",
    "make_timeuuid",
    "row_shape",
    "timeuuid_int",
]

_UUID_EPOCH = 0x01B21DD213814000
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_new_uuid = uuid.UUID.__new__
_setattr = object.__setattr__
_LSB_CLEAR = ~0xC000000000000000 & 0xFFFFFFFFFFFFFFFF
_LSB_VARIANT = 0x8000000000000000
_U64 = 1 << 64
_M64 = _U64 - 1
_X80 = 0x8080808080808080
_BIAS = 1 << 63


class Op(IntEnum):
    """``cdc$operation`` (cdc/log.hh); re-exported by ``cdc``."""

    PRE_IMAGE = 0
    UPDATE = 1
    INSERT = 2
    ROW_DELETE = 3
    PARTITION_DELETE = 4
    RANGE_DELETE_START_INCLUSIVE = 5
    RANGE_DELETE_START_EXCLUSIVE = 6
    RANGE_DELETE_END_INCLUSIVE = 7
    RANGE_DELETE_END_EXCLUSIVE = 8
    POST_IMAGE = 9
    SERVICE_ROW_DELETE = -3
    SERVICE_PARTITION_DELETE = -4


def timeuuid_int(ts_us: int, lsb_random: int) -> int:
    """The 128-bit value of ``cdc.random_timeuuid(ts_us, ...)`` given its 64 random bits."""
    ticks = ts_us * 10 + _UUID_EPOCH
    msb = ((ticks & 0xFFFFFFFF) << 32) | (((ticks >> 32) & 0xFFFF) << 16) | 0x1000 | ((ticks >> 48) & 0x0FFF)
    return (msb << 64) | (lsb_random & _LSB_CLEAR) | _LSB_VARIANT


def make_timeuuid(value: int) -> uuid.UUID:
    """``uuid.UUID(int=value)`` without its argument parsing (same object state)."""
    u = _new_uuid(uuid.UUID)
    _setattr(u, "int", value)
    _setattr(u, "is_safe", _SAFE_UNKNOWN)
    return u


class TablePlan:
    """What the fast path needs to know about one base table (cached per ``TableDef`` state)."""

    __slots__ = ("base", "builders", "ck_names", "columns", "deleted", "fast", "ncols", "opts", "order",
                 "pk_names", "rank", "values")  # fmt: skip

    def __init__(self, base: TableDef) -> None:
        opts = base.cdc
        assert opts is not None
        self.base = base
        self.opts = opts
        self.columns = base.columns
        self.ncols = len(base.columns)
        self.pk_names = [c.name for c in base.partition_key]
        self.ck_names = [c.name for c in base.clustering_key]
        has_empty = any(split_type(c.type)[0] == "empty" for c in base.columns)
        atomic = [
            c.name
            for c in base.regular_columns
            if collection_kind(c.type) is None and split_type(c.type)[0] != "empty"
        ]
        # row_entries order: by UTF-8 bytes of the column name
        self.order = sorted(atomic, key=lambda n: n.encode())
        self.rank = {n: i for i, n in enumerate(self.order)}
        self.deleted = {n: "cdc$deleted_" + n for n in self.order}
        self.values = opts.delta == "full"
        self.fast = opts.preimage == "false" and not opts.postimage and not has_empty
        self.builders: dict[Any, Callable[..., dict[str, Any]]] = {}

    def builder(self, key: tuple[Any, ...]) -> Callable[..., dict[str, Any]]:
        """The generated cell builder of one log-row shape (see ``_generate_builder``)."""
        b = self.builders.get(key)
        if b is None:
            if len(self.builders) > 256:
                self.builders.clear()
            b = self.builders[key] = _generate_builder(self, key)
        return b

    def current(self, base: TableDef) -> bool:
        return (
            base is self.base
            and base.cdc is self.opts
            and base.columns is self.columns
            and len(base.columns) == self.ncols
        )


class StreamRouter:
    """``Generations.stream_for`` with cached lookup tables (see the module docstring)."""

    def __init__(self, generations: Generations) -> None:
        self.generations = generations
        self._gens: Any = None
        self._n = -1
        self._starts: list[int] = []
        self._tables: list[tuple[list[int], list[tuple[bytes, ...]]]] = []
        self._tokens: dict[bytes, int] = {}
        self._newest = 0  # start (µs) of the newest generation
        self._memo: dict[int, bytes] = {}  # token -> stream in the newest generation

    def _refresh(self, gl: list[Any]) -> None:
        self._gens, self._n = gl, len(gl)
        self._starts = [g.start_ms * 1000 for g in gl]
        self._tables = [([r.end for r in g.ranges], [r.streams for r in g.ranges]) for g in gl]
        self._newest = self._starts[-1] if gl else 0
        self._memo = {}

    def _lookup(self, gen: int, token: int) -> bytes:
        ends, streams = self._tables[gen]
        j = bisect_left(ends, token)
        ss = streams[j if j < len(ends) else 0]
        # generations.shard_of(token, len(ss), ignore_msb)
        return ss[((((token + _BIAS) % _U64) << self.generations.ignore_msb) % _U64 * len(ss)) >> 64]

    def stream_for(self, token: int, ts_us: int) -> bytes:
        g = self.generations
        now_ms = getattr(g, "_now_ms", None)
        gl = getattr(g, "_gens", None)
        if now_ms is None or gl is None:  # pragma: no cover - another Generations implementation
            return g.stream_for(token, ts_us)
        return self.stream_at(token, ts_us, now_ms())

    def stream_at(self, token: int, ts_us: int, now_ms: int) -> bytes:
        """``stream_for`` given the generations' clock reading ``now_ms``."""
        g = self.generations
        gl: Any = getattr(g, "_gens", None)
        now = now_ms * 1000
        if gl is None or ts_us > now + GENERATION_LEEWAY_US or ts_us <= now - GENERATION_LEEWAY_US:
            return g.stream_for(token, ts_us)
        if gl is not self._gens or len(gl) != self._n:
            self._refresh(gl)
        if ts_us >= self._newest and gl:
            s = self._memo.get(token)
            if s is None:
                s = self._lookup(len(gl) - 1, token)
                if len(self._memo) < 65536:
                    self._memo[token] = s
            return s
        i = bisect_right(self._starts, ts_us)
        if not i:
            return g.stream_for(token, ts_us)  # raises: no generation at ts
        return self._lookup(i - 1, token)

    def token(self, stream: bytes) -> int:
        t = self._tokens.get(stream)
        if t is None:
            t = self._tokens[stream] = stream_token(stream)
        return t


def entries_of(plan: TablePlan, cells: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """The row's cells in ``row_entries`` order, or None if one is not a plain regular column."""
    order = plan.order
    if len(cells) * 4 < len(order):
        rank = plan.rank
        for name in cells:
            if name not in rank:
                return None
        return [(n, cells[n]) for n in sorted(cells, key=rank.__getitem__)]
    out = [(n, c) for n in order if (c := cells.get(n)) is not None]
    return out if len(out) == len(cells) else None


def fast_transform(
    cdc: Any, router: StreamRouter, plan: TablePlan, log: TableDef, pm: PartitionMutation
) -> list[PartitionMutation] | None:
    """The log mutations of ``pm`` (see the module docstring), or None for the general path."""
    if pm.static_row is not None or pm.range_tombstones:
        return None
    pk = pm.partition_key
    pk_names = plan.pk_names
    if len(pk) != len(pk_names):
        return None
    rows = pm.rows
    ptomb = pm.partition_tombstone_ts
    entries: list[tuple[str, Any]] | None = None
    ck: tuple[Any, ...] | None = None
    op: Any
    ttl = 0
    if not rows:
        if ptomb is None:
            return None
        ts = ptomb
        op = Op.SERVICE_PARTITION_DELETE if pm.system_originated else Op.PARTITION_DELETE
    elif len(rows) == 1 and ptomb is None:
        r = rows[0]
        ck = r.clustering
        if ck is None:
            return None
        m = r.marker
        cells = r.cells
        if r.row_tombstone_ts is not None:
            if m is not None or cells:
                return None
            ts = r.row_tombstone_ts
            op = Op.SERVICE_ROW_DELETE if pm.system_originated else Op.ROW_DELETE
        else:
            entries = entries_of(plan, cells) if cells else []
            if entries is None:
                return None
            if m is not None:
                if not m.live:
                    return None
                ts, ttl, op = m.ts, ttl0(m), 2
            elif entries:
                c0 = entries[0][1]
                if type(c0) is not AtomicCell:
                    return None
                ts, ttl, op = c0.ts, ttl0(c0), 1
            else:
                return None
            for _n, c in entries:
                if type(c) is not AtomicCell or c.ts != ts or (c.ttl if c.live and c.ttl else 0) != ttl:
                    return None
    else:
        return None

    # ---- from here on: exactly the general path's side effects, in its order
    if entries is None:
        stream, value, out = log_row(cdc, router, plan, pm.token, pk, ck, None, op, ttl, ts)
    else:
        names = tuple([n for n, _c in entries])
        live = None if all(c.live for _n, c in entries) else tuple([c.live for _n, c in entries])
        stream, value, out = log_row(cdc, router, plan, pm.token, pk, ck, pm.rows[0].cells, op, ttl, ts, None,
                                     names, live)  # fmt: skip
    row = RowMutation((make_timeuuid(value), 0), cells=out)
    return [PartitionMutation(log.keyspace, log.name, (stream,), router.token(stream), rows=[row])]


def log_row(  # noqa: PLR0917
    cdc: Any,
    router: StreamRouter,
    plan: TablePlan,
    token: int,
    pk: tuple[Any, ...],
    ck: tuple[Any, ...] | None,
    cells: dict[str, Any] | None,
    op: Any,
    ttl: int,
    ts: int,
    now_us: int | None = None,
    names: tuple[str, ...] = (),
    live: tuple[bool, ...] | None = None,
    build: Callable[..., dict[str, Any]] | None = None,
) -> tuple[bytes, int, dict[str, Any]]:
    """(stream, ``cdc$time`` as a 128-bit int, cells) of the single log row of one change:
    an upsert (``cells``: the base row's cells, ``names``: their names in ``row_entries`` order,
    ``live``: their live flags in that order or None when all are live, ``op`` 1 or 2, ``ttl`` its
    TTL or 0), a row delete (``cells`` None, ``ck`` set) or a partition delete (both None). Draws
    the ``cdc$time`` random bits and reads the clock like ``cdc._Builder``; may raise like
    ``Generations.stream_for``. ``now_us``: one reading of the clock that both the generations and
    ``cdc.now_us`` use (saves reading it twice; the general path's two readings may differ by µs).
    ``build``: ``plan.builder(key)`` of this change's shape when the caller already has it."""
    opts = plan.opts
    if now_us is None:
        stream = router.stream_for(token, ts)
        value = timeuuid_int(ts, cdc.rng.getrandbits(64))
        exp = cdc.now_us() + opts.ttl * 1_000_000 if opts.ttl else None
    else:
        stream = router.stream_at(token, ts, now_us // 1000)
        ticks = ts * 10 + _UUID_EPOCH  # timeuuid_int, inlined
        lsb = (cdc.rng.getrandbits(64) & _LSB_CLEAR) | _LSB_VARIANT
        value = (
            (
                ((ticks & 0xFFFFFFFF) << 32)
                | (((ticks >> 32) & 0xFFFF) << 16)
                | 0x1000
                | ((ticks >> 48) & 0x0FFF)
            )
            << 64
        ) | lsb
        exp = now_us + opts.ttl * 1_000_000 if opts.ttl else None
    cttl = opts.ttl or None
    if build is None:
        build = plan.builder(row_shape(ck, cells, names, live, ttl))
    out = build(pk, ck, cells, op, ttl, ts, cttl, exp)
    return stream, value, out


def row_shape(
    ck: tuple[Any, ...] | None,
    cells: dict[str, Any] | None,
    names: tuple[str, ...],
    live: tuple[bool, ...] | None,
    ttl: int,
) -> tuple[Any, ...]:
    """The ``TablePlan.builder`` key of a log row (see ``log_row``'s arguments)."""
    if cells is None:
        return (False, None, None, False, 0 if ck is None else len(ck))
    assert ck is not None
    return (True, names, live, bool(ttl), len(ck))


def log_key(value: int) -> tuple[tuple[int, int], int]:
    """The log table's clustering sort key (``rt.ck_key``) of the row (timeuuid ``value``, 0)."""
    time = (((value >> 64) & 0x0FFF) << 48) | (((value >> 80) & 0xFFFF) << 32) | (value >> 96)
    return ((time, (value & _M64) ^ _X80), 0)


def _generate_builder(plan: TablePlan, key: tuple[Any, ...]) -> Callable[..., dict[str, Any]]:
    """Compile ``build(pk, ck, cells, op, ttl, ts, cttl, exp) -> log cells`` for one log-row shape
    ``(upsert, entry names, live flags or None for all live, has ttl, len(ck))``: one dict display
    with the cells in the general path's order (``_Builder.new_row``/``set_clustering``/
    ``_visit_cells``/``mutation``); a repeated key keeps its first position and last value, as
    successive assignments do."""
    upsert, names, live, has_ttl, nck = key
    cell = "AC(ts, {}, True, cttl, exp)"
    items = [f"{n!r}: {cell.format(f'pk[{i}]')}" for i, n in enumerate(plan.pk_names)]
    cks = [f"{n!r}: {cell.format(f'ck[{i}]')}" for i, n in enumerate(plan.ck_names[:nck])]
    op = f"'cdc$operation': {cell.format('op')}"
    if upsert:
        items += cks
        if plan.values:
            for i, n in enumerate(names):
                if live is None or live[i]:
                    items.append(f"{n!r}: {cell.format(f'cells[{n!r}].value')}")
                else:
                    items.append(f"{plan.deleted[n]!r}: {cell.format('True')}")
        items.append(op)
        if has_ttl:
            items.append(f"'cdc$ttl': {cell.format('ttl')}")
    else:
        items.append(op)
        items += cks
    items.append(f"'cdc$end_of_batch': {cell.format('True')}")
    src = "def build(pk, ck, cells, op, ttl, ts, cttl, exp):\n    return {" + ", ".join(items) + "}\n"
    ns: dict[str, Any] = {"AC": AtomicCell}
    exec(src, ns)
    fn: Callable[..., dict[str, Any]] = ns["build"]
    return fn

"""``snapshot_table``: copy a source table into destinations through their normal write path.

The token ring is cut into ``ranges`` ranges (fixed at the snapshot's first start and kept in
Redis, ``store.py``); ``workers`` ranges are read at once (each page under the ``[source]`` read
caps). Every page becomes change events (``SourceRow.events``: write times from ``writetime()``)
written to every destination that still needs the range (``DestinationPath``: stages, dead-letter
store, retries, version guard). Once a range is written everywhere it is read again (``verify``):

* rows that vanished meanwhile are deleted in the destinations (with the re-read's time as write
  time): a delete streamed to a destination *before* the snapshot wrote the deleted row would
  otherwise be undone by that write, since a hard delete leaves nothing for the version guard;
* each destination's verifier (``Reconciler.verify_written``) reads the written rows back and
  rewrites those it does not hold as the source now does: a streamed *partial* update that
  reached a row before the snapshot wrote it leaves only the updated columns, at a version the
  snapshot's older cells lose against (the version guard is per row).

Then the range is marked done. A range a run had started but not finished (it was killed) is
compared whole with each destination once every range is done (``Reconciler.run`` with repair,
on those ranges): rows the killed run wrote and the source has deleted since are read by nobody
else. After that the snapshot is recorded as finished and is not redone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from cdcd.events import ChangeEvent, Op
from cdcd.scylla.values import hashable
from cdcd.snapshot.path import DestinationPath
from cdcd.snapshot.source import TableScan, snapshot_position, token_ranges
from cdcd.snapshot.store import SnapshotStore

__all__ = ["ACTIVE", "Progress", "snapshot_table"]


class Progress(msgspec.Struct, kw_only=True):
    """Progress of one table's snapshot (CLI bar, ``/status``, metrics)."""

    table: str
    destinations: list[str]
    ranges_total: int = 0
    ranges_done: int = 0
    rows: int = 0  # rows read and written in this run
    started: float = 0.0  # time.monotonic() of this run's start
    state: str = "running"  # running | finished | failed
    error: str | None = None
    _done_at_start: int = 0

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left, from the share of ranges done in this run (None: not known yet)."""
        done = self.ranges_done - self._done_at_start
        left = self.ranges_total - self.ranges_done
        if left <= 0:
            return 0.0
        if done <= 0:
            return None
        return (time.monotonic() - self.started) * left / done

    def status(self) -> dict[str, Any]:
        eta = self.eta()
        return {
            "destinations": self.destinations,
            "state": self.state,
            "ranges_done": self.ranges_done,
            "ranges_total": self.ranges_total,
            "rows": self.rows,
            "rows_per_second": round(self.rate(), 1),
            "eta_seconds": None if eta is None else round(eta, 1),
            "error": self.error,
        }


# table -> progress of the snapshot running in this process (read by /status and /metrics)
ACTIVE: dict[str, Progress] = {}


async def snapshot_table(
    *,
    scan: TableScan,
    table: str,
    paths: dict[str, DestinationPath],
    store: SnapshotStore,
    ranges: int = 64,
    workers: int = 4,
    progress: Progress | None = None,
    on_progress: Callable[[Progress], None] = lambda _p: None,
    verifiers: dict[str, Any] | None = None,
) -> Progress:
    """Snapshot ``table`` into every destination of ``paths`` that has not finished it."""
    prog = progress or Progress(table=table, destinations=sorted(paths))
    prog.started = time.monotonic()
    ACTIVE[table] = prog
    try:
        states = {d: await store.begin(d, table, ranges) for d in paths}
        todo = {d: s for d, s in states.items() if s.finished is None}
        if not todo:
            prog.state = "finished"
            return prog
        cut = next(iter(todo.values())).ranges
        for d, s in todo.items():
            if s.ranges != cut:  # a destination started with another --ranges: redo it with this cut
                await store.reset(d, table)
                todo[d] = await store.begin(d, table, cut)
        bounds = token_ranges(cut)
        need = {i: [d for d in todo if i not in todo[d].done] for i in range(cut)}
        # ranges an earlier run stopped in the middle of (kill -9): rows it wrote may have been
        # deleted in the source since, and this run does not read them again
        interrupted = {d: {i for i in todo[d].begun if i not in todo[d].done} for d in todo}
        prog.ranges_total = cut
        prog.ranges_done = prog._done_at_start = sum(1 for dests in need.values() if not dests)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i, dests in need.items():
            if dests:
                queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                dests = need[i]
                lo, hi = bounds[i]
                for d in dests:
                    await store.range_started(d, table, i)
                rows = 0
                written: list[dict[str, Any]] = []
                async for page in scan.scan(lo, hi):
                    read_us = int(time.time() * 1e6)
                    events: list[ChangeEvent] = []
                    for row in page:
                        events.extend(row.events(table, read_time_us=read_us))
                        written.append(row.key)
                    await asyncio.gather(*(paths[d].write(events) for d in dests))
                    rows += len(page)
                    prog.rows += len(page)
                    on_progress(prog)
                await _verify_range(
                    scan=scan, table=table, lo=lo, hi=hi, written=written,
                    paths={d: paths[d] for d in dests}, verifiers=verifiers or {},
                )  # fmt: skip
                for d in dests:
                    await store.range_done(d, table, i, rows)
                prog.ranges_done += 1
                on_progress(prog)

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(max(1, workers)):
                    tg.create_task(worker())
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        for d, ranges_ in interrupted.items():
            if ranges_ and verifiers and d in verifiers:  # compare those ranges whole, and repair
                verifiers[d].bounds = bounds  # the snapshot's cut
                await verifiers[d].run(repair=True, only=ranges_)
        for d in todo:
            await store.finish(d, table)
        prog.state = "finished"
        on_progress(prog)
        return prog
    except BaseException as exc:
        prog.state = "failed"
        prog.error = f"{type(exc).__name__}: {exc}"
        raise


async def _verify_range(
    *,
    scan: TableScan,
    table: str,
    lo: int,
    hi: int,
    written: list[dict[str, Any]],
    paths: dict[str, DestinationPath],
    verifiers: dict[str, Any],
) -> None:
    """Read range [lo, hi] again: delete in the destinations the rows written from it that the
    source no longer holds, and have each destination's verifier (``Reconciler.verify_written``)
    rewrite the rows it does not hold as the source now does; rows rewritten are read and checked
    again (at most ``_VERIFY_ROUNDS`` times) until no rewrite is needed."""
    if not written:
        return
    names = [c.name for c in scan.key_columns]
    checked_us = int(time.time() * 1e6)
    wanted = {tuple(hashable(k[n]) for n in names) for k in written}
    current = []
    present: set[tuple[Any, ...]] = set()
    async for page in scan.scan(lo, hi):
        for row in page:
            k = tuple(hashable(row.key[n]) for n in names)
            present.add(k)
            if k in wanted:
                current.append(row)
    gone = [k for k in written if tuple(hashable(k[n]) for n in names) not in present]
    for _ in range(_VERIFY_ROUNDS):
        if gone:
            await _delete(table, gone, checked_us, paths)
        found = await asyncio.gather(*(verifiers[d].verify_written(current) for d in paths if d in verifiers))
        rewritten = {tuple(hashable(k[n]) for n in names): k for keys in found for k in keys}
        if not rewritten:
            return
        # A rewrite read the source before it wrote, like the snapshot: a delete applied to the
        # destination in between was undone. Read those rows once more and check them again.
        checked_us = int(time.time() * 1e6)
        current, gone = [], []
        for k in rewritten.values():
            again = await scan.get(k)
            if again is None:
                gone.append(k)
            else:
                current.append(again)


_VERIFY_ROUNDS = 5


async def _delete(table: str, keys: list[dict[str, Any]], at: int, paths: dict[str, DestinationPath]) -> None:
    events = [
        ChangeEvent(
            table=table, pos=snapshot_position(k, at), batch_seq=0, op=Op.ROW_DELETE, write_time_us=at, key=k
        )
        for k in keys
    ]
    await asyncio.gather(*(p.write(events) for p in paths.values()))

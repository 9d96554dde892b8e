"""``reconcile_table``: prove a source table and a destination table hold the same rows; repair.

Per destination:

1. The destination's live rows are read (``targets.TargetReader``; it has no token, so it is read
   whole, keyset-paged, and every row is placed in its source token range by the driver's Murmur3
   hash of its partition key). Soft-deleted rows count as absent.
2. The source is read range by range (``TableScan``, under the ``[source]`` read caps, ``workers``
   ranges at once). Each source row goes through the common and the destination's stage chains
   (so masked columns are compared in masked form; a row the stages reject is not expected in the
   destination) and is put in the destination's comparable form (``targets.comparable``).
3. Per range, both sides' row count and order-independent checksum (sum of 64-bit BLAKE2b digests
   of each row's key and values, mod 2**64) are compared; a range that differs is compared row by
   row: *missing* (source only), *extra* (destination only), *different* (with the columns).
4. Re-check: a differing row is read again on both sides until it agrees (it was in flight: cdcd
   replicates, or the destination catches up) or it has *settled*: still differing when the
   source's and the destination's versions agree (a tampered value: reported at once), or after
   ``settle`` seconds without any suspect of this destination converging (the deadline moves on
   while rows keep converging, so a destination catching up is given the time it needs).
5. ``repair``: a missing or different row is written again from the re-read source row as ONE
   full-row change (every column, nulls included) through ``DestinationPath`` (stages, version
   guard). Its write time is the source row's newest cell write time, or one microsecond past
   the destination's version when both are equal (the destination holds that very change with
   other values: tampered). When the destination's version is newer than the source row read,
   the row is not touched (never overwrite a newer change) and counts as not repaired. An extra
   row is deleted by a row delete (the table's delete strategy applies) at the re-check time (or
   the destination row's version, if later). The repaired rows are then checked once more.

Exit status of the command: 0 agree, 1 differences (with ``--repair``: some not repaired), 2 errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec

from cdcd.config import Config
from cdcd.events import ChangeEvent, Op
from cdcd.schema import TableSchema
from cdcd.scylla.values import hashable
from cdcd.snapshot.bar import ProgressBar
from cdcd.snapshot.path import DestinationPath
from cdcd.snapshot.source import SNAPSHOT_POSITION, SourceRow, TableScan, snapshot_position, token_ranges
from cdcd.snapshot.targets import TargetReader, TargetRow, open_reader, source_form

__all__ = ["Difference", "ReconcileResult", "reconcile_command", "reconcile_table"]

_MASK = (1 << 64) - 1
Key = tuple[Any, ...]


@dataclass
class Difference:
    result: str  # missing | extra | different
    key: dict[str, Any]
    columns: list[str] = field(default_factory=list)
    source: dict[str, Any] | None = None
    destination: dict[str, Any] | None = None
    repaired: bool | None = None


@dataclass
class ReconcileResult:
    table: str
    destination: str
    rows_compared: int = 0
    ranges: int = 0
    ranges_differing: int = 0
    differences: list[Difference] = field(default_factory=list)
    repaired: int = 0
    not_repaired: int = 0
    converged: int = 0  # rows that differed at first and agreed when re-checked (in flight)

    def count(self, result: str) -> int:
        return sum(1 for d in self.differences if d.result == result)

    def summary(self) -> dict[str, Any]:
        return {
            "summary": True,
            "table": self.table,
            "destination": self.destination,
            "missing": self.count("missing"),
            "extra": self.count("extra"),
            "different": self.count("different"),
            "rows_compared": self.rows_compared,
            "ranges": self.ranges,
            "ranges_differing": self.ranges_differing,
            "converged": self.converged,
            "repaired": self.repaired,
            "not_repaired": self.not_repaired,
        }


_ENC = msgspec.msgpack.Encoder(enc_hook=repr)


def _digest(key: Key, values: Key) -> int:
    try:
        data = _ENC.encode((key, values))
    except (TypeError, ValueError, OverflowError):
        data = repr((key, values)).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _Side:
    """Rows of one token range on one side: key -> (comparable values, version)."""

    __slots__ = ("checksum", "rows")

    def __init__(self) -> None:
        self.rows: dict[Key, tuple[Key, int, dict[str, Any]]] = {}
        self.checksum = 0

    def add(self, key: Key, values: Key, version: int, canonical_key: dict[str, Any]) -> None:
        self.rows[key] = (values, version, canonical_key)
        self.checksum = (self.checksum + _digest(key, values)) & _MASK


class Reconciler:
    """One (table, destination) comparison; see the module docstring."""

    def __init__(
        self,
        *,
        scan: TableScan,
        schema: TableSchema,
        table: str,
        path: DestinationPath,
        reader: TargetReader,
        ranges: int = 64,
        workers: int = 4,
        settle: float = 30.0,
        on_progress: Callable[[int, int, int], None] = lambda _rows, _done, _total: None,
    ) -> None:
        self.scan = scan
        self.schema = schema
        self.table = table
        self.path = path
        self.reader = reader
        self.bounds = token_ranges(ranges)
        self.workers = workers
        self.settle = settle
        self.on_progress = on_progress
        self.keys = [c.name for c in schema.primary_key]
        self.cols = [c.name for c in schema.columns if c.kind == "regular"]
        self.form = source_form(schema, reader.kind)

    def key_of(self, key: dict[str, Any]) -> Key:
        return tuple(hashable(key[n]) for n in self.keys)

    def _range_of(self, token: int) -> int:
        lo, hi = 0, len(self.bounds) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if token > self.bounds[mid][1]:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def expected(self, rows: list[SourceRow]) -> list[tuple[SourceRow, Key]]:
        """Source rows as the destination should hold them: through the stages, comparable."""
        events = [
            ChangeEvent(
                table=self.table, pos=SNAPSHOT_POSITION, batch_seq=i, op=Op.INSERT, write_time_us=r.newest(),
                key=r.key, values=r.values,
            )
            for i, r in enumerate(rows)
        ]  # fmt: skip
        passed, _rejected = self.path.prepare(events)
        out = []
        for ev in passed:
            row = rows[ev.batch_seq]
            out.append((row, tuple(self.form(c, ev.values.get(c)) for c in self.cols)))
        return out

    def _target_values(self, row: TargetRow) -> Key:
        return tuple(row.values.get(c) for c in self.cols)

    async def run(self, repair: bool = False, only: set[int] | None = None) -> ReconcileResult:
        """Compare (``only``: those range indices), re-check, and with ``repair`` repair."""
        result = ReconcileResult(table=self.table, destination=self.path.destination, ranges=len(self.bounds))
        # 1. the destination, bucketed by token range
        dest: list[_Side] = [_Side() for _ in self.bounds]
        async for page in self.reader.rows():
            for row in page:
                if row.deleted:
                    continue
                token = await self.scan.token_of(row.key)
                dest[self._range_of(token)].add(
                    self.key_of(row.key), self._target_values(row), row.version, row.key
                )
        # 2-3. the source, range by range
        suspects: dict[Key, dict[str, Any]] = {}
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(self.bounds)):
            if only is None or i in only:
                queue.put_nowait(i)
        done = 0

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                i = queue.get_nowait()
                lo, hi = self.bounds[i]
                src = _Side()
                async for page in self.scan.scan(lo, hi):
                    for row, values in self.expected(page):
                        src.add(self.key_of(row.key), values, row.newest(), row.key)
                    result.rows_compared += len(page)
                mine = dest[i]
                if len(src.rows) != len(mine.rows) or src.checksum != mine.checksum:
                    result.ranges_differing += 1
                    for k, (values, _v, ck) in src.rows.items():
                        other = mine.rows.get(k)
                        if other is None or other[0] != values:
                            suspects[k] = ck
                    for k, (_values, _v, ck) in mine.rows.items():
                        if k not in src.rows:
                            suspects[k] = ck
                dest[i] = _Side()  # free it
                done += 1
                self.on_progress(result.rows_compared, done, len(self.bounds))

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(max(1, self.workers)):
                    tg.create_task(worker())
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        # 4. re-check until settled
        result.differences = await self.settle_differences(suspects)
        result.converged = len(suspects) - len(result.differences)
        # 5. repair
        if repair and result.differences:
            await self.repair(result)
        return result

    async def compare_one(
        self, key: dict[str, Any]
    ) -> tuple[Difference | None, bool, SourceRow | None, TargetRow | None]:
        """(difference or None, settled, source row, destination row) of one key, read now."""
        src = await self.scan.get(key)
        tgt = await self.reader.get(key)
        live = tgt if tgt is not None and not tgt.deleted else None
        expected = self.expected([src])[0] if src is not None else None
        if src is not None and expected is None:
            src = None  # the stages keep this row out of the destination
        if src is None and live is None:
            return None, True, src, tgt
        if expected is None:
            assert live is not None
            return Difference("extra", key, destination=dict(live.values)), False, src, tgt
        _row, values = expected
        if live is None:
            return (
                Difference("missing", key, source=dict(zip(self.cols, values, strict=True))),
                False,
                src,
                tgt,
            )
        theirs = self._target_values(live)
        if theirs == values:
            return None, True, src, tgt
        cols = [c for c, a, b in zip(self.cols, values, theirs, strict=True) if a != b]
        diff = Difference(
            "different", key, cols,
            source={c: v for c, v in zip(self.cols, values, strict=True) if c in cols},
            destination={c: live.values.get(c) for c in cols},
        )  # fmt: skip
        # the destination applied this very version and still differs: nothing is in flight
        return diff, src is not None and live.version >= src.newest() > 0, src, tgt

    async def settle_differences(self, suspects: dict[Key, dict[str, Any]]) -> list[Difference]:
        pending = dict(suspects)
        settled: dict[Key, Difference] = {}
        deadline = time.monotonic() + self.settle
        pause = 0.2
        while pending:
            converged = False
            for k, key in list(pending.items()):
                diff, stable, _s, _t = await self.compare_one(key)
                if diff is None:
                    del pending[k]
                    converged = True
                elif stable:
                    settled[k] = diff
                    del pending[k]
            if not pending:
                break
            now = time.monotonic()
            if converged:
                deadline = max(deadline, now + self.settle)
            if now >= deadline:
                for k, key in pending.items():
                    diff, _stable, _s, _t = await self.compare_one(key)
                    if diff is not None:
                        settled[k] = diff
                break
            await asyncio.sleep(min(pause, max(0.0, deadline - now)))
            pause = min(2.0, pause * 2)
        return sorted(settled.values(), key=lambda d: (d.result, repr(self.key_of(d.key))))

    def repair_event(
        self, src: SourceRow | None, tgt: TargetRow | None, key: dict[str, Any]
    ) -> ChangeEvent | None:
        """The change that makes the destination hold ``src`` (None: delete ``key``), by the rules of
        the module docstring; None when the destination holds a newer change (not touched)."""
        now_us = int(time.time() * 1e6)
        version = tgt.version if tgt is not None else 0
        if src is None:
            at = max(now_us, version)
            return ChangeEvent(
                table=self.table, pos=snapshot_position(key, at), batch_seq=0, op=Op.ROW_DELETE,
                write_time_us=at, key=key,
            )  # fmt: skip
        newest = src.newest() or now_us
        if version > newest:
            return None  # the destination holds a newer change: never overwrite it
        return src.full_event(self.table, newest + 1 if version == newest else newest)

    async def repair(self, result: ReconcileResult) -> None:
        events: list[ChangeEvent] = []
        fixed: list[Difference] = []
        for d in result.differences:
            diff, _stable, src, tgt = await self.compare_one(d.key)
            if diff is None:
                d.repaired = True
                continue
            event = self.repair_event(src, tgt, d.key)
            if event is None:
                d.repaired = False
                continue
            events.append(event)
            fixed.append(d)
        for start in range(0, len(events), 500):
            await self.path.write(events[start : start + 500])
        for d in fixed:
            diff, _stable, _s, _t = await self.compare_one(d.key)
            d.repaired = diff is None
        result.repaired = sum(1 for d in result.differences if d.repaired)
        result.not_repaired = len(result.differences) - result.repaired

    async def verify_written(self, rows: list[SourceRow]) -> list[dict[str, Any]]:
        """After a snapshot wrote ``rows`` (read again from the source just now): rewrite those
        the destination does not hold as read, by the repair rules. A streamed partial update
        that reached a row before the snapshot wrote it leaves the row with only the updated
        columns at the newest version, so the snapshot's own (older) cells were skipped: this
        writes the whole row one microsecond past that version. Returns the keys rewritten."""
        if not rows:
            return []
        held = {self.key_of(t.key): t for t in await self.reader.get_many([r.key for r in rows])}
        events = []
        for row, values in self.expected(rows):
            tgt = held.get(self.key_of(row.key))
            live = tgt is not None and not tgt.deleted
            if live and tgt is not None and self._target_values(tgt) == values:
                continue
            event = self.repair_event(row, tgt, row.key)
            if event is not None:
                events.append(event)
        if events:
            await self.path.write(events)
        return [e.key for e in events]


# --------------------------------------------------------------------------------------- command
def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)


def _key_text(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in key.items())


async def reconcile_table(
    cfg: Config, opened: Any, destination: str, *, ranges: int, settle: float, repair: bool,
    workers: int, on_progress: Callable[[int, int, int], None],
) -> ReconcileResult:  # fmt: skip
    """Reconcile one destination of an opened table (``commands.open_table``)."""
    dcfg = cfg.destinations[destination]
    path = opened.paths[destination]
    reader = await open_reader(destination, dcfg, path.mapping, path.schema or opened.schema)
    try:
        rec = Reconciler(
            scan=opened.scan, schema=path.schema or opened.schema, table=opened.table.source, path=opened.paths[destination],
            reader=reader, ranges=ranges, workers=workers, settle=settle, on_progress=on_progress,
        )  # fmt: skip
        return await rec.run(repair=repair)
    finally:
        await reader.aclose()


async def reconcile_command(
    cfg: Config,
    *,
    table: str,
    destination: str | None = None,
    repair: bool = False,
    as_json: bool = False,
    ranges: int = 64,
    settle: float = 30.0,
    quiet: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``cdcd reconcile``: 0 agree, 1 differences (with repair: some not repaired), 2 errors."""
    from cdcd.snapshot.commands import _fail, find_table, open_table

    stdout = out or sys.stdout
    stderr = err or sys.stderr
    try:
        tcfg, dests = find_table(cfg, table, destination)
        async with open_table(cfg, tcfg, dests, label="repair") as opened:
            bad = False
            for d in dests:
                bar = ProgressBar(f"reconcile {tcfg.source} -> {d}", stream=stderr)
                started = time.monotonic()

                def show(
                    rows: int, done: int, total: int, *, final: bool = False,
                    bar: ProgressBar = bar, started: float = started,
                ) -> None:  # fmt: skip
                    if quiet:
                        return
                    elapsed = time.monotonic() - started
                    eta = elapsed * (total - done) / done if done else None
                    bar.update(final=final, rows=rows, done=done, total=total,
                               rate=rows / elapsed if elapsed > 0 else 0.0, eta=eta)  # fmt: skip

                res = await reconcile_table(
                    cfg, opened, d, ranges=ranges, settle=settle, repair=repair,
                    workers=max(1, cfg.source.max_concurrent_reads // 2 or 4), on_progress=show,
                )  # fmt: skip
                show(res.rows_compared, res.ranges, res.ranges, final=True)
                for diff in res.differences:
                    if as_json:
                        obj = {"table": tcfg.source, "destination": d, "result": diff.result,
                               "key": _jsonable(diff.key)}  # fmt: skip
                        if diff.result == "different":
                            obj["columns"] = diff.columns
                            obj["source"] = _jsonable(diff.source)
                            obj["destination_values"] = _jsonable(diff.destination)
                        if diff.repaired is not None:
                            obj["repaired"] = diff.repaired
                        print(json.dumps(obj), file=stdout)
                    else:
                        cols = f" columns {', '.join(diff.columns)}" if diff.columns else ""
                        fix = (
                            ""
                            if diff.repaired is None
                            else (" (repaired)" if diff.repaired else " (NOT repaired)")
                        )
                        print(
                            f"{diff.result} {tcfg.source} -> {d}: {_key_text(diff.key)}{cols}{fix}",
                            file=stdout,
                        )
                summary = res.summary()
                if as_json:
                    print(json.dumps(summary), file=stdout)
                else:
                    print(
                        f"{tcfg.source} -> {d}: {summary['rows_compared']} rows compared, "
                        f"{summary['missing']} missing, {summary['extra']} extra, {summary['different']} different"
                        + (f", {res.repaired} repaired, {res.not_repaired} not repaired" if repair else ""),
                        file=stdout,
                    )
                stdout.flush()
                if (res.not_repaired if repair else len(res.differences)) > 0:
                    bad = True
            return 1 if bad else 0
    except Exception as exc:
        return _fail(exc, stderr)

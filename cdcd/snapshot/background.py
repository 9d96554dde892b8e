"""The daemon's per-table jobs: ``snapshot = "initial"`` and ``reconcile_every`` (``cdcd run``).

``TableJobs(daemon).run(table)`` runs in the daemon next to the table's branches:

1. ``snapshot = "initial"``: once every destination's target table exists (its branch ensured
   it), the table is snapshotted into the destinations that have no finished snapshot in Redis
   (``store.py``), while streaming goes on. It resumes from its finished ranges after a restart;
   a failure is logged and retried with backoff.
2. ``reconcile_every``: every that often, each destination is compared with the source (no
   repair): one log line per run and ``cdcd_reconcile_rows{table,destination,result}``.

Reads go through the daemon's ``ReadLimiter`` (the ``[source]`` caps shared with the CDC log
readers). The job never returns before the daemon stops (the daemon ends its main loop when one
of its tasks returns).
"""

from __future__ import annotations

import time
from typing import Any

from cdcd.app.deps import retry_policy
from cdcd.config import TableConfig
from cdcd.ops import emit
from cdcd.ops.logging import get_logger, scrub
from cdcd.snapshot.path import DestinationPath, prepare_destination
from cdcd.snapshot.run import Progress, snapshot_table
from cdcd.snapshot.source import TableScan, check_supported
from cdcd.snapshot.store import SnapshotStore

__all__ = ["TableJobs"]

log = get_logger("cdcd.snapshot")


class TableJobs:
    def __init__(self, daemon: Any, *, ranges: int = 64) -> None:
        self.d = daemon
        self.ranges = ranges

    async def run(self, table: TableConfig) -> None:
        d = self.d
        attempt = 0
        done = table.snapshot != "initial"
        last_reconcile = time.monotonic()
        while not d.stopping:
            try:
                if not done:
                    await self._snapshot(table)
                    done = True
                    last_reconcile = time.monotonic()
                if table.reconcile_every > 0:
                    wait = table.reconcile_every - (time.monotonic() - last_reconcile)
                    if wait > 0:
                        await d._sleep(wait)
                        continue
                    await self._reconcile(table)
                    last_reconcile = time.monotonic()
                    attempt = 0
                    continue
                await d._sleep(3600.0)
            except Exception as exc:
                attempt += 1
                pause = min(300.0, 5.0 * 2 ** min(attempt - 1, 6))
                log.warning(
                    "table job failed, retrying", table=table.source, error=scrub(f"{type(exc).__name__}: {exc}"),
                    retry_in=pause,
                )  # fmt: skip
                await d._sleep(pause)

    async def _paths(self, table: TableConfig, label: str) -> tuple[TableScan, dict[str, DestinationPath]]:
        d = self.d
        schema = d.schemas[table.source]
        check_supported(schema, table.source)
        scan = TableScan(d.deps.scylla, schema, fetch_size=d.cfg.source.fetch_size, limiter=d.limiter)
        paths = {}
        for dest in table.destinations:
            sink = await d._sink(dest)
            if sink is None:
                raise RuntimeError(f"destination {dest} is not connected")
            mapping, common, own, dest_schema = await prepare_destination(
                d.cfg, table, dest, sink=sink, schema=schema, masking=d.masking, deadletters=d.deadletters
            )
            paths[dest] = DestinationPath(
                destination=dest, table=table.source, sink=sink, mapping=mapping, deadletters=d.deadletters,
                retry=retry_policy(d.cfg), common=common, own=own, breaker=d.breakers[dest],
                events=d.telemetry, label=label, schema=dest_schema,
            )  # fmt: skip
        return scan, paths

    async def _snapshot(self, table: TableConfig) -> None:
        d = self.d
        store = SnapshotStore(d.deps.redis, prefix=d.cfg.state.key_prefix)
        pending = []
        for dest in table.destinations:
            state = await store.load(dest, table.source)
            if state is None or state.finished is None:
                pending.append(dest)
        if not pending:
            return
        scan, paths = await self._paths(table, "snapshot")
        paths = {k: v for k, v in paths.items() if k in pending}
        prog = Progress(table=table.source, destinations=sorted(paths))
        started = time.monotonic()
        log.info("snapshot started", table=table.source, destinations=sorted(paths))

        def show(p: Progress) -> None:
            emit.snapshot_progress(
                table=p.table, rows=p.rows, ranges_done=p.ranges_done, ranges_total=p.ranges_total
            )

        from cdcd.snapshot.reconcile import Reconciler
        from cdcd.snapshot.targets import open_reader

        readers = []
        try:
            verify = {}
            for dest, path in paths.items():
                dcfg = d.cfg.destinations[dest]
                reader = await open_reader(dest, dcfg, path.mapping, path.schema or d.schemas[table.source])
                readers.append(reader)
                verify[dest] = Reconciler(
                    scan=scan,
                    schema=path.schema or d.schemas[table.source],
                    table=table.source,
                    path=path,
                    reader=reader,
                    settle=10.0,
                )
            await snapshot_table(
                scan=scan, table=table.source, paths=paths, store=store, ranges=self.ranges,
                workers=max(1, d.cfg.source.max_concurrent_reads // 2), progress=prog, on_progress=show,
                verifiers=verify,
            )  # fmt: skip
        finally:
            for reader in readers:
                await reader.aclose()
            emit.snapshot_finished(
                table=table.source, destinations=sorted(paths), rows=prog.rows,
                seconds=time.monotonic() - started, state=prog.state,
            )  # fmt: skip

    async def _reconcile(self, table: TableConfig) -> None:
        from cdcd.snapshot.reconcile import Reconciler
        from cdcd.snapshot.targets import open_reader

        d = self.d
        scan, paths = await self._paths(table, "reconcile")
        for dest, path in paths.items():
            started = time.monotonic()
            dcfg = d.cfg.destinations[dest]
            reader = await open_reader(dest, dcfg, path.mapping, path.schema or d.schemas[table.source])
            try:
                rec = Reconciler(
                    scan=scan, schema=path.schema or d.schemas[table.source], table=table.source, path=path, reader=reader,
                    ranges=self.ranges, workers=max(1, d.cfg.source.max_concurrent_reads // 4),
                    settle=max(30.0, 4 * d.cfg.source.confidence_window),
                )  # fmt: skip
                res = await rec.run()
            finally:
                await reader.aclose()
            counts = {r: res.count(r) for r in ("missing", "extra", "different")}
            counts["equal"] = max(0, res.rows_compared - counts["missing"] - counts["different"])
            emit.reconcile_finished(
                table=table.source, destination=dest, counts=counts, seconds=time.monotonic() - started
            )

"""``cdcd snapshot`` and ``cdcd reconcile``: connecting, then running ``snapshot_table`` /
``reconcile_table`` with a progress bar. Exit codes as documented in ``cdcd.cli``."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

from cdcd.app.deps import Dependencies, retry_policy
from cdcd.config import Config, TableConfig
from cdcd.errors import CdcdError, ConfigError
from cdcd.masking.runtime import Masking
from cdcd.ops.logging import scrub
from cdcd.schema import TableSchema
from cdcd.scylla.limits import ReadLimiter
from cdcd.snapshot.bar import ProgressBar
from cdcd.snapshot.path import DestinationPath, prepare_destination
from cdcd.snapshot.run import Progress, snapshot_table
from cdcd.snapshot.source import TableScan, check_supported
from cdcd.snapshot.store import SnapshotStore
from cdcd.state import DeadLetterStore

__all__ = ["Opened", "find_table", "open_table", "snapshot_command"]


def find_table(cfg: Config, source: str, destination: str | None) -> tuple[TableConfig, list[str]]:
    """The table ``source`` of the configuration and the destinations to work on."""
    table = next((t for t in cfg.tables if t.source == source), None)
    if table is None:
        known = ", ".join(t.source for t in cfg.tables)
        raise ConfigError(f"--table {source!r} is not a replicated table (tables: {known})", key="--table")
    if destination is None:
        return table, list(table.destinations)
    if destination not in table.destinations:
        raise ConfigError(
            f"--destination {destination!r} does not receive {source} (its destinations: "
            f"{', '.join(table.destinations)})",
            key="--destination",
        )
    return table, [destination]


@dataclass
class Opened:
    deps: Dependencies
    table: TableConfig
    schema: TableSchema
    scan: TableScan
    paths: dict[str, DestinationPath]
    store: SnapshotStore
    limiter: ReadLimiter


@contextlib.asynccontextmanager
async def open_table(
    cfg: Config, table: TableConfig, destinations: list[str], *, label: str
) -> AsyncIterator[Opened]:
    """Connect to Redis, Scylla and the destinations; prepare the target tables."""
    deps = Dependencies(cfg)
    masks: list[Masking] = []
    try:
        redis = await deps.connect_redis()
        scylla = await deps.connect_scylla()
        schema = await deps.table_schema(table)
        check_supported(schema, table.source)
        limiter = ReadLimiter(
            max_concurrent=cfg.source.max_concurrent_reads, max_rate=cfg.source.max_read_rate
        )
        scan = TableScan(scylla, schema, fetch_size=cfg.source.fetch_size, limiter=limiter)
        deadletters = DeadLetterStore(redis, prefix=cfg.state.key_prefix)
        masking = Masking(cfg)  # the same masking the daemon applies, checked against the schema
        masks.append(masking)
        masking.check({table.source: schema})
        paths: dict[str, DestinationPath] = {}
        for d in destinations:
            sink = await deps.connect_sink(d)
            mapping, common, own, dest_schema = await prepare_destination(
                cfg, table, d, sink=sink, schema=schema, masking=masking, deadletters=deadletters
            )
            paths[d] = DestinationPath(
                destination=d, table=table.source, sink=sink, mapping=mapping, deadletters=deadletters,
                retry=retry_policy(cfg), common=common, own=own, label=label, schema=dest_schema,
            )  # fmt: skip
        yield Opened(
            deps, table, schema, scan, paths, SnapshotStore(redis, prefix=cfg.state.key_prefix), limiter
        )
    finally:
        for m in masks:
            await m.aclose()
        await deps.aclose()


@contextlib.asynccontextmanager
async def verifiers(cfg: Config, opened: Opened) -> AsyncIterator[dict[str, Any]]:
    """Per destination of ``opened``, the ``Reconciler`` a snapshot checks its written ranges
    with (``Reconciler.verify_written``), on a reader of the destination table."""
    from cdcd.snapshot.reconcile import Reconciler
    from cdcd.snapshot.targets import open_reader

    readers = []
    out: dict[str, Any] = {}
    try:
        for d, path in opened.paths.items():
            dcfg = cfg.destinations[d]
            reader = await open_reader(d, dcfg, path.mapping, path.schema or opened.schema)
            readers.append(reader)
            out[d] = Reconciler(scan=opened.scan, schema=path.schema or opened.schema, table=opened.table.source, path=path,
                                reader=reader, settle=10.0)  # fmt: skip
        yield out
    finally:
        for reader in readers:
            with contextlib.suppress(Exception):
                await reader.aclose()


def _fail(exc: BaseException, out: TextIO) -> int:
    if isinstance(exc, ConfigError):
        print(f"cdcd: {exc}", file=out)
        return 2
    text = str(exc) if isinstance(exc, CdcdError) else f"{type(exc).__name__}: {exc}"
    print(f"cdcd: {scrub(text)}", file=out)
    return 2


async def snapshot_command(
    cfg: Config,
    *,
    table: str,
    destination: str | None = None,
    ranges: int = 64,
    workers: int | None = None,
    restart: bool = False,
    quiet: bool = False,
    out: TextIO | None = None,
) -> int:
    """``cdcd snapshot``: 0 when every destination holds the finished snapshot, 2 on errors."""
    err = out or sys.stderr
    try:
        tcfg, dests = find_table(cfg, table, destination)
        async with open_table(cfg, tcfg, dests, label="snapshot") as opened:
            if restart:
                for d in dests:
                    await opened.store.reset(d, tcfg.source)
            bar = ProgressBar(f"snapshot {tcfg.source} -> {','.join(dests)}", stream=err)

            def show(p: Progress, final: bool = False) -> None:
                if not quiet:
                    bar.update(
                        final=final,
                        rows=p.rows,
                        done=p.ranges_done,
                        total=p.ranges_total,
                        rate=p.rate(),
                        eta=p.eta(),
                    )

            async with verifiers(cfg, opened) as verify:
                prog = await snapshot_table(
                    scan=opened.scan, table=tcfg.source, paths=opened.paths, store=opened.store, ranges=ranges,
                    workers=workers or max(1, cfg.source.max_concurrent_reads // 2 or 4), on_progress=show,
                    verifiers=verify,
                )  # fmt: skip
            show(prog, final=True)
            rejected = sum(p.rejected for p in opened.paths.values())
            dead = sum(p.writer.stats.dead_lettered for p in opened.paths.values())
            print(
                json.dumps(
                    {
                        "table": tcfg.source,
                        "destinations": dests,
                        "rows": prog.rows,
                        "rejected": rejected,
                        "dead_lettered": dead,
                        "ranges": prog.ranges_total,
                        "state": prog.state,
                    }
                ),
                file=err,
            )
            return 0
    except Exception as exc:
        return _fail(exc, err)


def main(cfg: Config, args: Any) -> int:
    """Entry point of both commands from ``cdcd.cli`` (parsed arguments)."""
    import asyncio

    if args.command == "snapshot":
        return asyncio.run(
            snapshot_command(
                cfg, table=args.table, destination=args.destination, ranges=args.ranges, workers=args.workers,
                restart=args.restart, quiet=args.quiet,
            )
        )  # fmt: skip
    from cdcd.snapshot.reconcile import reconcile_command

    return asyncio.run(
        reconcile_command(
            cfg, table=args.table, destination=args.destination, repair=args.repair, as_json=args.json,
            ranges=args.ranges, settle=args.settle, quiet=args.quiet,
        )
    )  # fmt: skip

"""``Daemon``: one cdcd process: startup -> main loop -> graceful shutdown (see ``cdcd.app``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import gc
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar, cast

import redis.exceptions
from cassandra import Unauthorized
from prometheus_client import CollectorRegistry

from cdcd import __version__
from cdcd.app import reload as live
from cdcd.app.deps import (
    Dependencies,
    MappingFactory,
    SinkFactory,
    default_sink_factory,
    pipeline_config,
    reader_config,
    retry_policy,
    table_mapping,
    timed,
)
from cdcd.app.dlq import DlqTool
from cdcd.app.dlq_http import dlq_routes
from cdcd.app.leases import Hold, LeaseCoordinator
from cdcd.app.validation import (
    branch_stages,
    project,
    refresh_quarantine,
    refresh_targets,
    table_options,
    undecodable_entries,
)
from cdcd.config import Config, TableConfig, load, redacted
from cdcd.errors import CdcdError, ConfigError, DependencyUnavailable, LeaseLost
from cdcd.events import timeuuid_to_micros
from cdcd.flow import Branch, CircuitBreaker, SharedReader, SystemClock, is_retriable
from cdcd.flow.applied import DestinationCheckpoints, records_applied
from cdcd.flow.load import LoopLoad
from cdcd.masking.runtime import Masking
from cdcd.ops import emit, metrics, tracing
from cdcd.ops.horizon import DataLossWatch, fold_lag
from cdcd.ops.http import CheckResult, HttpServer, build_status, make_app
from cdcd.ops.logging import get_logger, scrub
from cdcd.ops.progress import ProgressLog
from cdcd.schema import TableSchema
from cdcd.schema_watch import SchemaGate, SchemaStore, SchemaWatcher
from cdcd.scylla import GroupReader, StreamDiscovery, StreamGroup, start_floor_ms
from cdcd.scylla.decode import UndecodableGroup
from cdcd.scylla.limits import ReadLimiter
from cdcd.scylla.windows import min_timeuuid
from cdcd.sinks import Sink
from cdcd.sinks.offsets import RecordsApplied, floor_applied
from cdcd.snapshot.background import TableJobs
from cdcd.snapshot.run import ACTIVE as SNAPSHOTS
from cdcd.stages.staleness import StalenessStage, maintain_audit, off_reason
from cdcd.state import KINDS, CheckpointStore, DeadLetterStore
from cdcd.state.leases import LeaseStore, replica_id

__all__ = ["Daemon", "StartAt"]

log = get_logger("cdcd.app")
_TRANSIENT = (OSError, TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def transient(exc: BaseException) -> bool:
    """Worth retrying at start-up: a dependency that is down or slow, not a bug or bad config."""
    return isinstance(exc, _TRANSIENT) or (is_retriable(exc) and not isinstance(exc, ConfigError))


T = TypeVar("T")
StartAt = Literal["now", "earliest"] | datetime.datetime | None


class Daemon:
    """One cdcd process. ``await serve()`` returns the exit code."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_file: str = "",
        start_at: StartAt = None,
        sink_factory: SinkFactory = default_sink_factory,
        mapping_factory: MappingFactory = table_mapping,
        backfill: bool = False,
    ) -> None:
        self.cfg = cfg
        # why the too_old check is off (--backfill, config), or None
        self.staleness_off = off_reason(cfg, backfill=backfill)
        self.config_file = config_file
        self.start_at = start_at
        self.deps = Dependencies(cfg, sink_factory)
        self.mapping_factory = mapping_factory
        self.clock = SystemClock()
        self.telemetry = emit.FlowTelemetry(alert_ratio=cfg.validation.alert_ratio)
        self.state = "starting"
        self.started_at = time.time()
        # (destination, table, group key) -> the destination's branch of that stream group
        self.pipelines: dict[tuple[str, str, str], Branch] = {}
        # (table, group key) -> the group's shared reader (one read for every destination)
        self.readers: dict[tuple[str, str], SharedReader] = {}
        self._reader_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.loop_load = LoopLoad()  # is the event loop out of CPU (then branches do not detach)
        # caps on this replica's log reads, shared by every reader
        self.limiter = ReadLimiter(
            max_concurrent=cfg.source.max_concurrent_reads, max_rate=cfg.source.max_read_rate
        )
        self.breakers = {
            name: CircuitBreaker(
                self.clock,
                failure_threshold=cfg.pipeline.breaker.failure_threshold,
                reset_timeout=cfg.pipeline.breaker.reset_timeout,
            )
            for name in cfg.destinations
        }
        self.exit_code = 0
        self.force_exit = False
        self.http: HttpServer | None = None
        self.local_metrics = CollectorRegistry()
        self.ttls: dict[str, int] = {}  # source table -> CDC log TTL (s), known once its schema is read
        # (table, destination) -> lag estimated from Redis while no pipeline runs (destination down)
        self.stored_lags: dict[tuple[str, str], float] = {}
        self.local_metrics.register(
            metrics.PipelineCollector(
                self._statuses, emit.replica, lambda: self.ttls, stored_lags=lambda: self.stored_lags
            )
        )
        self.horizon = DataLossWatch(cfg.pipeline.data_loss_warning)
        self.masking = Masking(cfg, replica=emit.replica)  # masks once, before the fan-out
        self._masking_metrics: Any = self.masking.collector()  # follows self.masking across reloads
        self.local_metrics.register(self._masking_metrics)
        self.horizon_every = 10.0  # seconds between data-loss checks
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sink_tasks: dict[str, asyncio.Task[Sink | None]] = {}
        self._active: set[tuple[str, str]] = set()  # (table, destination) replicating
        self._ready_cache: tuple[float, dict[str, CheckResult]] | None = None
        # leases (cdcd.app.leases): which stream groups this replica runs; supervisors per
        # (table, destination), started and stopped by config reloads (cdcd.app.reload)
        self.replica_id = replica_id(cfg.instance.replica)
        self.leases: LeaseCoordinator | None = None
        self._supervisors: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reloading = asyncio.Lock()
        self._side_tasks: set[asyncio.Task[Any]] = set()  # config reloads under way
        # (table, destination) -> the branch's own stages (ignored columns, validator), built once
        # the destination table's definition was read (cdcd.app.validation)
        self.branch_stages: dict[tuple[str, str], list[Any]] = {}
        self._dlq: DlqTool | None = None  # /admin/dlq (built on first use)

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def serve(self) -> int:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal, sig)
        previous_hup = signal.getsignal(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.startup()
            if not self.stopping:
                await self.main_loop()
        except Exception as exc:
            log.error(
                "cdcd cannot run",
                error=scrub(f"{type(exc).__name__}: {exc}"),
                exc_info=not isinstance(exc, CdcdError),
            )
            self.exit_code = 1
        finally:
            await self.shutdown()
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                    if previous[sig] is not None:  # (cdcd run's: exit at once while it winds down)
                        signal.signal(sig, previous[sig])
            except KeyboardInterrupt:
                # SIGINT in the moment between the two: removing the loop's handler restores
                # Python's default one; shutdown is complete, so exit as a second signal does
                os._exit(1)
            loop.remove_signal_handler(signal.SIGHUP)
            if previous_hup is not None:
                signal.signal(signal.SIGHUP, previous_hup)
        return 1 if self.force_exit else self.exit_code

    def handle_signal(self, sig: signal.Signals) -> None:
        """First signal: graceful shutdown. Second: abandon at once (uvicorn ``force_exit``)."""
        if self.stopping:
            self.force_exit = True
            emit.shutdown_requested(signal=sig.name, forced=True)
            for p in self.pipelines.values():
                p.terminate()
            for task in [*self._tasks, *self._supervisors.values(), *self._reader_tasks.values()]:
                task.cancel()
            return
        emit.shutdown_requested(signal=sig.name, forced=False)
        self.request_stop()

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def startup(self) -> None:
        cfg = self.cfg
        emit.set_replica(cfg.instance.replica)
        tracing.configure(cfg.tracing, replica=cfg.instance.replica)
        emit.startup(
            config_file=self.config_file, tables=len(cfg.tables), destinations=list(cfg.destinations)
        )
        log.debug("effective configuration", config=redacted(cfg))
        if cfg.http.enabled:
            self.http = HttpServer(self._http_app(), cfg.http.listen)
            await self.http.start()
        # Destinations are connected by their own supervisors (_sink): one that is down must not
        # hold back the others. Redis and Scylla are needed by all.
        await self._until_up("redis", self.deps.connect_redis)
        await self._until_up("scylla", self.deps.connect_scylla)
        if self.stopping:
            return
        assert self.deps.redis is not None and self.deps.scylla is not None
        self.leases = LeaseCoordinator(
            LeaseStore(self.deps.redis, prefix=cfg.state.key_prefix),
            replica=self.replica_id, name=cfg.instance.replica, ttl=cfg.state.lease_ttl,
            fingerprint=live.fingerprint(cfg), lags=self._group_lags,
            handover_timeout=min(20.0, cfg.pipeline.shutdown_timeout),
        )  # fmt: skip
        self.checkpoints = CheckpointStore(self.deps.redis, prefix=cfg.state.key_prefix, fence=self.leases)
        self.deadletters = DeadLetterStore(self.deps.redis, prefix=cfg.state.key_prefix)
        self.discovery = StreamDiscovery(self.deps.scylla, tablet_group_size=cfg.source.tablet_group_size)
        self.schemas: dict[str, TableSchema] = {}
        for table in cfg.tables:
            schema = await self._until_up(
                f"table {table.source}", functools.partial(self.deps.table_schema, table)
            )
            if schema is None:
                return
            self.schemas[table.source] = schema
            self.ttls[table.source] = schema.cdc.ttl
        self.masking.check(self.schemas)
        # schema changes (cdcd.schema_watch): versions in Redis, detection, per-table policy
        self.schema_watch = SchemaWatcher(
            self.deps.scylla,
            SchemaStore(
                self.deps.redis, prefix=cfg.state.key_prefix, cache_ttl=cfg.source.schema_check_interval
            ),
            {t.source: (t.schema_changes, self.schemas[t.source]) for t in cfg.tables},
            check_interval=cfg.source.schema_check_interval,
            replica=cfg.instance.replica,
        )
        self.gates: dict[tuple[str, str], SchemaGate] = {}
        await self._until_up("redis", self.schema_watch.start)
        if self.stopping:
            return
        # What start-up built (modules, driver metadata, config) lives as long as the process:
        # keep it out of the collector's scans (measured: garbage collection per 100k changes
        # 1.63 -> 1.19 CPU-s, bench/all_destinations.py --gc-stats=--freeze).
        gc.collect()
        gc.freeze()
        self.state = "running"

    async def main_loop(self) -> None:
        assert self._stop is not None
        assert self.leases is not None
        self._tasks.append(asyncio.create_task(self.leases.run(), name="leases"))
        for table in self.cfg.tables:
            for dest in table.destinations:
                self._start_supervisor(table, dest)
        for table in self.cfg.tables:  # snapshot = "initial", reconcile_every (cdcd.snapshot.background)
            if table.snapshot == "initial" or table.reconcile_every > 0:
                jobs = TableJobs(self).run(table)
                self._tasks.append(asyncio.create_task(jobs, name=f"jobs:{table.source}"))
        self._tasks.append(asyncio.create_task(self._refresh_dlq_sizes(), name="dlq-sizes"))
        if self.staleness_off:
            log.warning("staleness max_age check is off: old events are applied", by=self.staleness_off)
        self._tasks.append(asyncio.create_task(maintain_audit(self.deadletters, self.cfg, off_by=self.staleness_off, replica=self.cfg.instance.replica, sleep=self._sleep, stopping=lambda: self.stopping), name="staleness-audit"))  # fmt: skip
        self._tasks.append(asyncio.create_task(self._refresh_quarantine(), name="quarantine"))
        self._tasks.append(asyncio.create_task(self.schema_watch.run(), name="schema-watch"))
        self._tasks.append(asyncio.create_task(self._watch_data_loss(), name="data-loss-watch"))
        self._tasks.append(asyncio.create_task(ProgressLog(self._statuses, self.cfg.logging.progress_interval, sleep=self._sleep, stopping=lambda: self.stopping).run(), name="progress"))  # fmt: skip
        stop = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([stop, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        for task in done:
            if task is not stop and not task.cancelled() and task.exception() is not None:
                err = task.exception()
                assert err is not None
                if isinstance(err, Unauthorized):  # a grant is missing (docs/permissions.md)
                    log.error(
                        "Scylla refused a read: the role lacks a permission (see docs/permissions.md)",
                        task=task.get_name(), error=scrub(str(err)),
                    )  # fmt: skip
                else:
                    log.error(
                        "supervisor crashed; shutting down", task=task.get_name(), error=scrub(repr(err))
                    )
                self.exit_code = 1

    async def shutdown(self) -> None:
        self.state = "stopping"
        self.request_stop()
        started = time.monotonic()
        budget = self.cfg.pipeline.shutdown_timeout
        pipelines = list(self.pipelines.values())
        if not self.force_exit and pipelines:
            closing = asyncio.gather(*(p.close(deadline=budget) for p in pipelines), return_exceptions=True)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(closing, budget + 5)
        for p in pipelines:
            if p.state not in ("closed", "done", "terminated", "failed"):
                p.terminate()
        tasks = [
            *self._tasks,
            *self._supervisors.values(),
            *self._sink_tasks.values(),
            *self._reader_tasks.values(),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        abandoned = sum(1 for p in pipelines if p.state == "terminated")
        if self.leases is not None:  # the branches stopped: give the groups to the other replicas now
            await self.leases.close()
        if self.http is not None:
            await self.http.aclose()
        await self.deps.aclose()
        await self.masking.aclose()
        tracing.shutdown()
        self.state = "stopped"
        emit.shutdown_complete(seconds=time.monotonic() - started, abandoned=abandoned)

    # -------------------------------------------------------------------------- supervising
    async def _until_up(self, what: str, connect: Callable[[], Awaitable[T]]) -> T | None:
        """``connect()`` until it succeeds or a stop is requested (None then). Only transient
        errors are retried; anything else (ConfigError, a bug) propagates: it needs an operator."""
        attempt = 0
        policy = self.cfg.pipeline.retry
        while not self.stopping:
            started = time.monotonic()
            try:
                result = await connect()
            except Exception as exc:
                if not transient(exc):
                    raise
                attempt += 1
                emit.dependency_checked(
                    dependency=what, ok=False, detail=f"{type(exc).__name__}: {exc}", seconds=0
                )
                delay = min(policy.max, policy.initial * policy.multiplier ** min(attempt - 1, 30))
                await self._sleep(delay)
                continue
            emit.dependency_checked(dependency=what, ok=True, detail="", seconds=time.monotonic() - started)
            return result
        return None

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _start_floor(
        self, table: TableConfig, dest: str, sink: Sink | None = None, mapping: Any = None
    ) -> int:
        """Where streams without a checkpoint start (ms); see the module docstring. Kept in Redis;
        when Redis has none (first start, or Redis lost its state), the destination's recorded
        floor (``cdcd.sinks.offsets``) if it holds positions, else now."""
        assert self.deps.redis is not None
        key = f"{self.cfg.state.key_prefix}:start:{dest}:{table.source}"
        now_ms = int(time.time() * 1000)
        recorder = cast(RecordsApplied, sink) if sink is not None and records_applied(sink) else None
        held = None
        asked = False  # the destination's floor was read (``held``)
        if self.start_at is not None:
            floor = start_floor_ms(self.start_at, now_ms)
            await self.deps.redis.set(key, str(floor))
        else:
            if await self.deps.redis.get(key) is None and recorder is not None:
                held, asked = await recorder.applied_start(mapping), True
            await self.deps.redis.set(key, str(now_ms if held is None else held), nx=True)
            stored = await self.deps.redis.get(key)
            floor = int(stored) if stored is not None else now_ms
            if held is not None:
                log.warning(
                    "Redis had no start position: restored from the destination's offsets table",
                    table=table.source, destination=dest, start_ms=held,
                )  # fmt: skip
        # The destination keeps the floor from the start, not only from its first write: else
        # Redis losing its state before anything was written would move the floor to a later "now"
        # and skip what changed in between.
        if recorder is not None and held is None and (asked or await recorder.applied_start(mapping) is None):
            await recorder.record_applied(mapping, floor_applied(floor))
        return floor

    async def _sink(self, dest: str) -> Sink | None:
        """The destination's sink, connected (None if cdcd stops first). One connection attempt
        loop per destination, shared by its supervisors."""
        task = self._sink_tasks.get(dest)
        if task is None:
            connect = functools.partial(self.deps.connect_sink, dest)
            task = asyncio.create_task(self._until_up(f"destination:{dest}", connect), name=f"connect:{dest}")
            self._sink_tasks[dest] = task
        return await asyncio.shield(task)

    async def _supervise(self, table: TableConfig, dest: str) -> None:
        """Run the groups of one (table, destination), generation after generation."""
        schema = self.schemas[table.source]
        sink = await self._sink(dest)
        if sink is None:
            return
        mapping = table_options(
            self.mapping_factory(table, self.cfg.destinations[dest]), table, dest, self.cfg
        )
        try:
            schema = project(schema, table.ignore_columns)
        except ValueError as exc:
            raise ConfigError(
                str(exc), key=f"tables[{self.cfg.tables.index(table)}].ignore_columns"
            ) from None
        assert self.deps.redis is not None
        # schema changes: the table is watched (also one added by a reload), the gate applies its policy
        await self.schema_watch.track(
            table.source, table.schema_changes, self.schemas[table.source],
            check_interval=self.cfg.source.schema_check_interval,
        )  # fmt: skip
        gate = self.gates[(table.source, dest)] = SchemaGate(
            watcher=self.schema_watch, table=table.source, destination=dest, sink=sink, mapping=mapping,
            redis=self.deps.redis, prefix=self.cfg.state.key_prefix,
            dest_schema=functools.partial(self._dest_schema, table),  # ignored columns out, masked: text
            on_altered=functools.partial(self._retarget, table.source, dest),
        )  # fmt: skip
        await self._until_up(f"destination:{dest}", gate.ensure)  # sink.ensure_table at the applied schema
        dest_schema = self.masking.schema_for(table.source, schema)  # masked columns are text
        stages = await self._until_up(
            f"destination:{dest}",
            functools.partial(
                branch_stages, table, dest, sink, mapping, dest_schema, deadletters=self.deadletters
            ),
        )
        self.branch_stages[(table.source, dest)] = stages or []
        floor = await self._until_up("redis", lambda: self._start_floor(table, dest, sink, mapping))
        if floor is None or self.stopping:
            return
        emit.table_ready(table=table.source, destination=dest, ttl=schema.cdc.ttl)
        self._active.add((table.source, dest))
        ttl = schema.cdc.ttl
        finished: set[int] = set()
        while not self.stopping:
            groups = await self._until_up(
                "scylla", lambda: self.discovery.groups(table.source, since_ms=floor, ttl_s=ttl)
            )
            if groups is None:
                return
            pending = sorted({g.generation for g in groups} - finished)
            if not pending:
                await self._sleep(self.cfg.source.generation_poll)
                continue
            generation = pending[0]
            current = [g for g in groups if g.generation == generation]
            if await self._all_done(dest, current):  # applied before this start: skip quietly
                finished.add(generation)
                continue
            results = await asyncio.gather(*(self._run_group(table, dest, g, floor) for g in current))
            if self.stopping or not all(results):
                return
            finished.add(generation)
            nxt = (
                pending[1]
                if len(pending) > 1
                else await self.discovery.next_generation(table.source, generation)
            )
            emit.generation_switched(table=table.source, destination=dest, old=generation, new=nxt or 0)
            for g in current:  # finished groups leave /status once their successors start
                self.pipelines.pop((dest, table.source, g.key), None)

    async def _all_done(self, dest: str, groups: list[StreamGroup]) -> bool:
        for g in groups:
            done = await self._until_up("redis", functools.partial(self.checkpoints.is_done, dest, g))
            if not done:
                return False
        return True

    async def _run_group(self, table: TableConfig, dest: str, group: StreamGroup, floor: int) -> bool:
        """Run the destination's branch of one group until it is done (True) or cdcd stops
        (False); restart it from its checkpoint after an error, with a growing pause. It runs only
        while this replica holds the group's lease (``cdcd.app.leases``): a lease lost or handed
        over stops the branch (drained and checkpointed when handed over) and it waits for the
        lease again, or until another replica has finished the group."""
        assert self.leases is not None
        failures = 0
        emit.group_started(table=table.source, destination=dest, group=group.key,
                           streams=len(group.streams), end=group.end)  # fmt: skip
        self.leases.want(table.source, group.key)
        try:
            while not self.stopping:
                hold = await self._lease(dest, group)
                if hold is None:  # finished by another replica, or cdcd stops
                    return not self.stopping
                pipeline = self._branch(table, dest, group, floor)
                self._forget_cached_rows(dest, pipeline.mapping)
                self.pipelines[(dest, table.source, group.key)] = pipeline
                hold.enter()
                try:
                    await self._run_under(hold, pipeline, self._shared_reader(table, group))
                except Exception as exc:
                    if isinstance(exc, LeaseLost) or hold.ending:
                        if isinstance(exc, LeaseLost):  # a fenced save found the lease gone:
                            self.leases.fenced(table.source, group.key, hold)  # the group stops
                        self._drop_branch(pipeline)
                        continue  # the lease went: wait for it again
                    failures += 1
                    pause = min(300.0, 5.0 * 2 ** min(failures - 1, 6))
                    emit.pipeline_failed(
                        table=table.source, destination=dest, group=group.key, error=exc, retry_in=pause
                    )
                    await self._sleep(pause)
                    continue
                finally:
                    hold.leave()
                if pipeline.state != "done" and hold.ending and not self.stopping:
                    self._drop_branch(pipeline)
                    continue  # handed over or lost while running
                emit.group_finished(
                    table=table.source, destination=dest, group=group.key, state=pipeline.state
                )
                return pipeline.state == "done"
            return False
        finally:
            self.leases.unwant(table.source, group.key)

    def _drop_branch(self, pipeline: Branch) -> None:
        """The group went to another replica: its branch leaves /status and the metrics here."""
        key = (pipeline.pid.destination, pipeline.pid.table, pipeline.pid.group)
        if self.pipelines.get(key) is pipeline:
            del self.pipelines[key]

    async def _lease(self, dest: str, group: StreamGroup) -> Hold | None:
        """This replica's hold on the group once it has one; None when the group is done for
        ``dest`` meanwhile (another replica finished it) or cdcd stops."""
        assert self.leases is not None
        while not self.stopping:
            try:
                return await self.leases.hold_for(group.table, group.key)
            except TimeoutError:
                pass
            with contextlib.suppress(Exception):
                if await self.checkpoints.is_done(dest, group):
                    return None
        return None

    async def _run_under(self, hold: Hold, pipeline: Branch, shared: SharedReader) -> None:
        """``pipeline.run`` while ``hold`` lasts: terminated at once when the lease is lost,
        drained and checkpointed when it is handed over."""
        run = asyncio.create_task(pipeline.run(shared), name=f"branch:{pipeline.pid}")
        lost = asyncio.create_task(hold.lost.wait())
        release = asyncio.create_task(hold.release.wait())
        try:
            await asyncio.wait({run, lost, release}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():
                if hold.lost.is_set():
                    pipeline.terminate()
                else:
                    assert self.leases is not None
                    closing = asyncio.create_task(
                        pipeline.close(deadline=max(1.0, self.leases.handover_timeout - 2))
                    )
                    await asyncio.wait({closing, lost}, return_when=asyncio.FIRST_COMPLETED)
                    if not closing.done():  # lost while draining: abandon the rest
                        pipeline.terminate()
                    await asyncio.gather(closing, return_exceptions=True)
            await run
        except asyncio.CancelledError:
            pipeline.terminate()
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            raise
        finally:
            lost.cancel()
            release.cancel()

    def _forget_cached_rows(self, dest: str, mapping: Any) -> None:
        """A group (re)starts for ``mapping``: while it was not ours (another replica held it,
        or its pipeline stopped on an error) someone else may have written its keys, so a sink that
        caches the rows it wrote (ClickHouse ``row_cache_rows``, ``cdcd.sinks.clickhouse.cache``) must
        not trust them any more. Sinks without ``forget`` keep nothing to drop."""
        forget = getattr(self.deps.sinks.get(dest), "forget", None)
        if callable(forget):
            forget(mapping)

    def _group_reader(
        self, table: TableConfig, group: StreamGroup, floor: int | None, who: str
    ) -> GroupReader:
        """A reader of the group's CDC log (``who``: "shared" or the catching-up destination)."""
        assert self.deps.scylla is not None

        async def on_invalid(err: UndecodableGroup) -> None:
            emit.undecodable_group(table=table.source, destination=who, reason=err.reason)
            dests = list(table.destinations) if who == "shared" else [who]  # kept: dead-letter queue
            await self.deadletters.add(undecodable_entries(err, group.generation, dests, time.time()))

        return GroupReader(
            self.deps.scylla,
            self.discovery,
            group,
            config=reader_config(self.cfg),
            start_floor_ms=floor,
            on_invalid=on_invalid,
            limiter=self.limiter if who == "shared" else self.limiter.catch_up(),
            on_rows=functools.partial(emit.log_rows_read, table.source),
        )

    def _shared_reader(self, table: TableConfig, group: StreamGroup) -> SharedReader:
        """The group's shared reader, started by the first destination branch that needs it."""
        key = (table.source, group.key)
        shared = self.readers.get(key)
        if shared is not None and not shared.closed:
            return shared
        reader = self._group_reader(table, group, None, "shared")
        shared = SharedReader(
            group=group,
            source=tracing.traced_source(reader.read, table=table.source, destination="*", group=group.key),
            stages=self.masking.stages(table.source),
            expected=len(table.destinations),
            clock=self.clock,
            retry=retry_policy(self.cfg),
            detach_after=self.cfg.pipeline.detach_after,
            busy=self.loop_load.busy,
        )
        self.readers[key] = shared
        self._reader_tasks[key] = asyncio.create_task(
            self._run_reader(key, shared), name=f"read:{table.source}:{group.key}"
        )
        return shared

    async def _run_reader(self, key: tuple[str, str], shared: SharedReader) -> None:
        try:
            await shared.run()
        except asyncio.CancelledError:
            pass
        except Exception:  # its branches fail with this error, report it and are restarted
            pass
        finally:
            if self.readers.get(key) is shared:
                del self.readers[key]
                self._reader_tasks.pop(key, None)

    def _branch(self, table: TableConfig, dest: str, group: StreamGroup, floor: int) -> Branch:
        dest_cfg = self.cfg.destinations[dest]
        mapping = table_options(self.mapping_factory(table, dest_cfg), table, dest, self.cfg)
        sink: Any = self.deps.sinks[dest]
        checkpoints: Any = self.checkpoints
        if records_applied(sink):  # positions also kept by the destination (cdcd.flow.applied)
            checkpoints = DestinationCheckpoints(self.checkpoints, sink, mapping, group, start_ms=floor)
            sink = checkpoints.writer

        def catch_up(start: Mapping[bytes, Any]) -> Any:
            reader = self._group_reader(table, group, floor, dest)
            traced = tracing.traced_source(reader.read, table=table.source, destination=dest, group=group.key)
            return traced(start)

        return Branch(
            destination=dest,
            group=group,
            mapping=mapping,
            sink=sink,
            checkpoints=checkpoints,
            deadletters=self.deadletters,
            breaker=self.breakers[dest],
            config=pipeline_config(self.cfg, dest_cfg),
            clock=self.clock,
            events=self.telemetry,
            catch_up=catch_up,
            floor_time=min_timeuuid(max(group.generation, floor) * 1000),
            # too-old events first, then the destination's own: ignored columns, validator
            stages=[
                *([] if self.staleness_off else [StalenessStage(self.cfg.staleness.max_age)]),
                *self.branch_stages.get((table.source, dest), ()),
            ],
            gate=self.gates.get((table.source, dest)),
        )

    def _start_supervisor(self, table: TableConfig, dest: str) -> None:
        task = asyncio.create_task(self._supervise(table, dest), name=f"{dest}:{table.source}")
        self._supervisors[(table.source, dest)] = task
        task.add_done_callback(self._supervisor_done)

    def _supervisor_done(self, task: asyncio.Task[None]) -> None:
        """A supervisor that raised stops the daemon (as before leases, main_loop's rule)."""
        if task.cancelled() or task.exception() is None or self.stopping:
            return
        err = task.exception()
        if isinstance(err, Unauthorized):  # a grant is missing (docs/permissions.md)
            log.error("Scylla refused a read: the role lacks a permission (see docs/permissions.md)",
                      task=task.get_name(), error=scrub(str(err)))  # fmt: skip
        else:
            log.error("supervisor crashed; shutting down", task=task.get_name(), error=scrub(repr(err)))
        self.exit_code = 1
        self.request_stop()

    async def _stop_pair(self, table: str, dest: str) -> None:
        """Stop one (table, destination): drain and checkpoint its branches, end its supervisor."""
        branches = [p for (d, t, _), p in list(self.pipelines.items()) if (t, d) == (table, dest)]
        await asyncio.gather(
            *(p.close(deadline=self.cfg.pipeline.shutdown_timeout) for p in branches), return_exceptions=True
        )
        task = self._supervisors.pop((table, dest), None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for key in [k for k in self.pipelines if (k[1], k[0]) == (table, dest)]:
            del self.pipelines[key]
        self._active.discard((table, dest))
        self.stored_lags.pop((table, dest), None)

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def reload(self) -> Mapping[str, Any]:
        """SIGHUP / ``POST /admin/reload``: re-read the config file and apply what may change
        live (``cdcd.app.reload``); if any setting that cannot change live differs, nothing is
        applied and the refused keys are logged."""
        async with self._reloading:
            try:
                new = load(self.config_file)
                plan = live.plan(self.cfg, new)
            except Exception as exc:
                emit.config_reloaded(
                    result="failed", changes=[], refused=[], error=f"{type(exc).__name__}: {exc}"
                )
                return {"result": "failed", "error": scrub(f"{type(exc).__name__}: {exc}")}
            if plan.refused:
                emit.config_reloaded(result="refused", changes=plan.changes, refused=plan.refused)
                return {"result": "refused", "refused": plan.refused, "changes": plan.changes}
            if not plan.changes:
                emit.config_reloaded(result="unchanged", changes=[], refused=[])
                return {"result": "unchanged", "changes": []}
            if self.state != "running":
                return {"result": "failed", "error": f"cdcd is {self.state}"}
            try:
                await self._apply(new, plan)
            except Exception as exc:
                emit.config_reloaded(
                    result="failed", changes=plan.changes, refused=[], error=f"{type(exc).__name__}: {exc}"
                )
                return {"result": "failed", "error": scrub(f"{type(exc).__name__}: {exc}")}
            emit.config_reloaded(result="applied", changes=plan.changes, refused=[])
            return {"result": "applied", "changes": plan.changes,
                    "started": sorted(f"{t} -> {d}" for t, d in plan.added),
                    "stopped": sorted(f"{t} -> {d}" for t, d in plan.removed),
                    "restarted": sorted(f"{t} -> {d}" for t, d in plan.restart)}  # fmt: skip

    async def _apply(self, new: Config, plan: live.Plan) -> None:
        """Switch to ``new``: schemas of new tables first (a missing one fails the reload before
        anything changed), then stop, restart and start the pairs of ``plan``."""
        old = self.cfg
        self.deps.cfg = new
        masking: Masking | None = None
        try:
            schemas = {}
            for table in new.tables:
                if table.source in plan.new_tables:
                    schemas[table.source] = await self.deps.table_schema(table)
            if _masking_rules(old) != _masking_rules(new) or plan.new_tables:
                masking = Masking(new, replica=emit.replica)  # the new rules, checked before any stop
                masking.check({**self.schemas, **schemas})
        except BaseException:
            self.deps.cfg = old
            if masking is not None:
                await masking.aclose()
            raise
        if masking is not None:  # every running pair's shared stages hold the old masking
            plan.restart |= {(t.source, d) for t in old.tables for d in t.destinations} - plan.removed
        for pair in sorted(plan.removed | plan.restart):
            await self._stop_pair(*pair)
        if masking is not None:  # every pair using the old rules is stopped (a rule change restarts all)
            previous, self.masking = self.masking, masking
            self._masking_metrics.masking = masking
            await previous.aclose()
        self.cfg = new
        if self.leases is not None:
            self.leases.fingerprint = live.fingerprint(new)
        for source, schema in schemas.items():
            self.schemas[source] = schema
            self.ttls[source] = schema.cdc.ttl
        for name in new.destinations:
            if (
                name in plan.destinations
                or name not in self.breakers
                or old.pipeline.breaker != new.pipeline.breaker
            ):
                self.breakers[name] = CircuitBreaker(self.clock,
                    failure_threshold=new.pipeline.breaker.failure_threshold,
                    reset_timeout=new.pipeline.breaker.reset_timeout)  # fmt: skip
        for name in [n for n in list(self.deps.sinks) if n not in new.destinations]:
            sink = self.deps.sinks.pop(name)
            self._sink_tasks.pop(name, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sink.aclose(), 10)
        for name in plan.destinations & set(self.deps.sinks):  # batch overrides: a fresh sink object
            self._sink_tasks.pop(name, None)
        self.limiter = ReadLimiter(
            max_concurrent=new.source.max_concurrent_reads, max_rate=new.source.max_read_rate
        )
        for table in new.tables:
            for dest in table.destinations:
                if (table.source, dest) in plan.added | plan.restart:
                    self._start_supervisor(table, dest)

    def _group_lags(self) -> dict[tuple[str, str, str], float | None]:
        """(table, group, destination) -> lag of the running branches (for the heartbeat)."""
        return {
            (p.pid.table, p.pid.group, p.pid.destination): p.status().lag_seconds
            for p in list(self.pipelines.values())
            if p.state not in ("done", "closed", "terminated", "failed")
        }

    async def _stored_lag(self, table: TableConfig, dest: str) -> float | None:
        """Lag of a (table, destination) whose pipelines are not running, from what Redis holds:
        now minus the oldest applied position of the oldest unfinished generation (streams
        without a checkpoint count from the start floor). None when nothing is known."""
        if self.deps.redis is None:  # (the loop starts after start-up: checkpoints, discovery exist)
            return None
        try:
            stored = await self.deps.redis.get(f"{self.cfg.state.key_prefix}:start:{dest}:{table.source}")
            if stored is None:
                return None  # never started: nothing to lose yet
            floor = int(stored)
            ttl = self.ttls.get(table.source, 0)
            for group_list in _by_generation(
                await self.discovery.groups(table.source, since_ms=floor, ttl_s=ttl)
            ):
                oldest: float | None = None
                for g in group_list:
                    if await self.checkpoints.is_done(dest, g):
                        continue
                    positions = await self.checkpoints.load(dest, g)
                    times = [timeuuid_to_micros(p.time) / 1e6 for p in positions.values()]
                    if len(positions) < len(g.streams):
                        times.append(max(floor, g.generation) / 1000)
                    if times:
                        oldest = min(times) if oldest is None else min(oldest, *times)
                if oldest is not None:
                    return max(0.0, time.time() - oldest)
        except Exception as exc:  # an estimate only: Redis or Scylla trouble is reported elsewhere
            log.debug("stored lag unknown", table=table.source, destination=dest, error=scrub(repr(exc)))
        return None

    async def _refresh_dlq_sizes(self) -> None:
        while not self.stopping:
            with contextlib.suppress(Exception):
                for dest in self.cfg.destinations:
                    for kind in KINDS:
                        size = await self.deadletters.count(kind, dest)
                        emit.dlq_size(destination=dest, kind=kind, size=size)
            await self._sleep(30.0)

    async def _retarget(self, table: str, dest: str) -> None:
        """The schema gate altered the destination table: its validator checks the new columns
        from the next event on (not only at the next periodic refresh)."""
        key = (table, dest)
        await refresh_targets({key: self.branch_stages.get(key, [])}, self.deps.sinks, self.cfg)

    async def _refresh_quarantine(self) -> None:
        """on_invalid = "quarantine_key": release keys whose entries were resolved (cdcd dlq);
        every 30 s, validators re-read their destination table's definition."""
        rounds = 0
        while not self.stopping:
            try:
                await refresh_quarantine(self.branch_stages, self.deadletters)
                if rounds % 6 == 5:
                    await refresh_targets(self.branch_stages, self.deps.sinks, self.cfg)
            except Exception as exc:  # Redis or a destination down: try again next round
                log.debug("validator refresh failed", error=scrub(repr(exc)))
            rounds += 1
            await self._sleep(5.0)

    async def _watch_data_loss(self) -> None:
        """R-43: warn (and later say "recovered") when a destination's time until data loss
        drops below the threshold. Runs whatever scrapes /metrics. A (table, destination) with no
        running pipeline (its destination has been down since start-up) has its lag estimated
        from the checkpoints in Redis (``stored_lags``, also shown by /metrics and /status)."""
        while not self.stopping:
            lags = fold_lag(self._statuses())
            now = time.monotonic()
            for table in self.cfg.tables:
                for dest in table.destinations:
                    key = (table.source, dest)
                    lag = lags.get(key)
                    estimate = None
                    if lag is None and key not in self._active:
                        lag = estimate = await self._stored_lag(table, dest)
                    if estimate is None:
                        self.stored_lags.pop(key, None)
                    else:
                        self.stored_lags[key] = estimate
                    obs = self.horizon.observe(table.source, dest, self.ttls.get(table.source, 0), lag, now)
                    if obs is not None:
                        emit.data_loss_horizon(obs)
            await self._sleep(self.horizon_every)

    # ---------------------------------------------------------------------------- http views
    def _statuses(self) -> list[Any]:
        return self.masking.override([p.status() for p in list(self.pipelines.values())])

    def status(self) -> Mapping[str, Any]:
        out = dict(self._status())
        watch = getattr(self, "schema_watch", None)
        if watch is not None:  # each table's schema version (cdcd.schema_watch)
            out["schemas"] = watch.status()
            for table, entry in (out.get("tables") or {}).items():
                if table in out["schemas"] and isinstance(entry, dict):
                    entry["schema_version"] = out["schemas"][table]["version"]
        return out

    def _status(self) -> Mapping[str, Any]:
        return build_status(
            self._statuses(),
            ttls=self.ttls,
            stored_lags=self.stored_lags,
            version=__version__,
            replica=self.cfg.instance.replica,
            state=self.state,
            started_at=datetime.datetime.fromtimestamp(self.started_at, datetime.UTC).isoformat(),
            now=time.time(),
            **(self.leases.status() if self.leases is not None else {"replica_id": self.replica_id}),
            snapshots={t: p.status() for t, p in SNAPSHOTS.items()},
        )

    async def ready(self) -> Mapping[str, CheckResult]:
        """/readyz: Redis, Scylla and every destination answer, and every (table, destination)
        is replicating (its start position is fixed: writes from now on will be applied)."""
        now = time.monotonic()
        if self._ready_cache is not None and now - self._ready_cache[0] < 2.0:
            return self._ready_cache[1]
        pairs = sum(len(t.destinations) for t in self.cfg.tables)
        # A (table, destination) whose every current branch stopped on an error (e.g. the role
        # may not read its CDC log) is not replicating, even though its supervisor retries.
        states: dict[tuple[str, str], set[str]] = {}
        for (dest, table, _), branch in list(self.pipelines.items()):
            states.setdefault((table, dest), set()).add(branch.state)
        failing = {key for key, seen in states.items() if seen == {"failed"}}
        active = len(self._active - failing)
        detail = f"{self.state}; replicating {active} of {pairs} table destinations"
        if failing:
            detail += "; failing: " + ", ".join(f"{t} -> {d}" for t, d in sorted(failing))
        checks: dict[str, CheckResult] = {
            "daemon": CheckResult(ok=self.state == "running" and active == pairs, detail=detail),
            **self.masking.ready_checks(CheckResult),
        }
        watch = getattr(self, "schema_watch", None)
        halted = {t: w.halt for t, w in watch.tables.items() if w.halt is not None} if watch else {}
        if halted:  # tables halted by a schema change (schema_changes = "halt")
            checks["schema"] = CheckResult(
                ok=False, detail="; ".join(f"halted: {t} ({h.reason})" for t, h in sorted(halted.items()))
            )
        probes: dict[str, Awaitable[Any]] = {}  # run at once: one slow dependency does not add up
        if self.deps.redis is not None:
            probes["redis"] = self.deps.redis.ping()
        if self.deps.scylla is not None:
            probes["scylla"] = self.deps.scylla.execute("SELECT release_version FROM system.local")
        for name, sink in list(self.deps.sinks.items()):
            probes[f"destination:{name}"] = sink.healthcheck()
        results = await asyncio.gather(*(timed(p, 5.0) for p in probes.values()))
        checks.update(zip(probes, results, strict=True))
        for dep, result in checks.items():
            if dep == "daemon":
                continue
            emit.dependency_checked(
                dependency=dep, ok=result.ok, detail=result.detail, seconds=result.seconds
            )
        self._ready_cache = (now, checks)
        return checks

    async def flush_checkpoints(self) -> Mapping[str, Any]:
        """Admin ``checkpoints/flush``: save every replicating pipeline's applied positions now
        (``Pipeline.commit_now``), e.g. before maintenance. ``saved`` counts pipelines that had
        something new to save; a failed save (Redis down, lease lost) is counted and named in
        ``errors`` without stopping the others."""
        flushed = saved = 0
        errors: list[str] = []
        for (dest, table, group), p in list(self.pipelines.items()):
            if p.state not in ("running", "retrying", "circuit-open"):
                continue
            flushed += 1
            try:
                if await p.commit_now():
                    saved += 1
            except Exception as exc:
                errors.append(scrub(f"{dest} {table} {group}: {type(exc).__name__}: {exc}"))
        return {"pipelines": flushed, "saved": saved, "failed": len(errors), "errors": errors[:20]}

    def _dest_schema(self, table: TableConfig, schema: TableSchema) -> TableSchema:
        """The destination's schema of ``schema``: without the table's ``ignore_columns`` (those it
        still has), masked columns as text (the current rules)."""
        names = {c.name for c in schema.columns}
        kept = project(schema, [c for c in table.ignore_columns if c in names])
        out: TableSchema = self.masking.schema_for(table.source, kept)
        return out

    async def _resume(self, table: str) -> Mapping[str, Any]:
        """Admin ``resume/<table>``: lift a schema-change halt (``cdcd resume --table`` does the same)."""
        watch = getattr(self, "schema_watch", None)
        if watch is None:
            raise RuntimeError("cdcd is still starting")
        result: Mapping[str, Any] = await watch.resume(table)
        return result

    def _http_app(self) -> Any:
        return make_app(
            status=self.status,
            ready=self.ready,
            registries=[metrics.REGISTRY, self.local_metrics],
            admin_token=self.cfg.http.admin_token,
            admin_actions={
                "checkpoints/flush": self.flush_checkpoints,
                "reload": self.reload,
                # POST /admin/resume/<keyspace.table>: lift a schema-change halt
                **{f"resume/{t.source}": functools.partial(self._resume, t.source) for t in self.cfg.tables},
            },
            extra_routes=dlq_routes(self._dlq_tool),
        )

    async def _dlq_tool(self) -> DlqTool:
        """The ``/admin/dlq`` operations on this daemon's Redis, sinks and source schemas."""
        if self._dlq is None:
            if not hasattr(self, "deadletters"):
                raise DependencyUnavailable("cdcd is still starting: Redis is not connected yet")

            async def sink(dest: str) -> Sink:
                got = await self._sink(dest)
                if got is None:
                    raise DependencyUnavailable(f"destination {dest} is not connected")
                return got

            async def schema(table: TableConfig) -> TableSchema:
                return self.schemas[table.source]

            self._dlq = DlqTool(self.cfg, self.deadletters, sink=sink, schema=schema)
        return self._dlq


def _by_generation(groups: list[StreamGroup]) -> list[list[StreamGroup]]:
    """Groups split by generation, oldest generation first."""
    out: dict[int, list[StreamGroup]] = {}
    for g in groups:
        out.setdefault(g.generation, []).append(g)
    return [out[k] for k in sorted(out)]


def _masking_rules(cfg: Config) -> Any:
    """What masking is built from, but the keys and the vault (those cannot change live)."""
    return (cfg.masking.rules, {t.source: t.masking for t in cfg.tables})

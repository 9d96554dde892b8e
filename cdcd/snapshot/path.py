"""The per-destination write path of snapshot and repair rows: the same one streamed changes take.

``DestinationPath.write(events)``: the common stage chain (what ``SharedReader`` runs once per read
batch: masking) -> the destination's own chain (what its ``Branch`` runs: validation) ->
rejections to the dead-letter store (validation queue / staleness audit, as ``Branch`` files them)
-> ``SinkWriter`` (retry with backoff, the destination's circuit breaker, ``BadRows`` rows
dead-lettered after ``max_attempts``) -> ``Sink.write`` (the version guard decides by write time).

``prepare_destination(...)`` builds both chains (and prepares the target table) exactly as the
daemon does for a branch; it is the single place snapshot, reconcile and repair get them from.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cdcd.config import Config, TableConfig
from cdcd.events import ChangeEvent
from cdcd.flow.branch import default_rejection_kind
from cdcd.flow.clock import SystemClock
from cdcd.flow.contracts import FlowEvents, NoFlowEvents, PipelineId
from cdcd.flow.retry import CircuitBreaker, RetryPolicy
from cdcd.flow.writer import SinkWriter
from cdcd.masking.runtime import Masking
from cdcd.schema import TableSchema
from cdcd.sinks import Sink
from cdcd.stages import Chain
from cdcd.state.deadletter import DeadLetterStore

__all__ = ["DestinationPath", "prepare_destination"]


async def prepare_destination(
    cfg: Config,
    table: TableConfig,
    destination: str,
    *,
    sink: Any,
    schema: TableSchema,
    masking: Masking,
    deadletters: DeadLetterStore | None,
) -> tuple[Any, Chain, Chain, TableSchema]:
    """(mapping, common chain, destination chain, the table's schema as the destination holds
    it: masked columns are text, ignored columns absent) of ``table`` in ``destination``, with the
    target table ready: what the daemon's supervisor does before a ``Branch`` starts. The common
    chain is the table's masking (``masking.check`` must have accepted the schema); the
    destination's is its validation (ignored columns, the validator against the real target
    table). No staleness stage: snapshot and repair rows are old by nature, the version guard
    decides."""
    from cdcd.app.deps import table_mapping
    from cdcd.app.validation import branch_stages, project, table_options

    mapping = table_options(table_mapping(table, cfg.destinations[destination]), table, destination, cfg)
    dest_schema = masking.schema_for(table.source, project(schema, table.ignore_columns))
    await sink.ensure_table(mapping, dest_schema)
    own = await branch_stages(table, destination, sink, mapping, dest_schema, deadletters=deadletters)
    return mapping, Chain(masking.stages(table.source)), Chain(own or []), dest_schema


class DestinationPath:
    """Stages + dead-letter store + ``SinkWriter`` for one (table, destination)."""

    def __init__(
        self,
        *,
        destination: str,
        table: str,
        sink: Sink,
        mapping: Any,
        deadletters: DeadLetterStore,
        retry: RetryPolicy,
        common: Chain | None = None,
        own: Chain | None = None,
        breaker: CircuitBreaker | None = None,
        events: FlowEvents | None = None,
        write_timeout: float = 120.0,
        label: str = "snapshot",
        schema: TableSchema | None = None,
    ) -> None:
        clock = SystemClock()
        self.destination = destination
        self.mapping = mapping
        # the table as the destination holds it (prepare_destination); reconcile compares in it
        self.schema = schema
        self.common = common or Chain()
        self.own = own or Chain()
        self.deadletters = deadletters
        self.events = events or NoFlowEvents()
        self.pid = PipelineId(destination=destination, table=table, group=label)
        self.rejected = 0
        self.writer = SinkWriter(
            sink=sink, mapping=mapping, destination=destination,
            breaker=breaker or CircuitBreaker(clock), retry=retry, write_timeout=write_timeout,
            clock=clock, events=self.events, pid=self.pid, dead_letter=deadletters.add,
            set_state=lambda _state: None, audit_stale=False,
        )  # fmt: skip

    def prepare(self, events: Sequence[ChangeEvent]) -> tuple[list[ChangeEvent], list[Any]]:
        """Both chains: what would be written, and the rejections."""
        passed, rejections = self.common.run(events)
        passed, own = self.own.run(passed)
        return list(passed), [*rejections, *own]

    async def write(self, events: Sequence[ChangeEvent]) -> int:
        """Write ``events`` (one table, in order); returns how many passed the stages."""
        passed, rejections = self.prepare(events)
        if rejections:
            now = time.time()
            await self.deadletters.add([
                DeadLetterStore.make(
                    default_rejection_kind(r), self.destination, r.event, reason=r.reason, stage=r.stage,
                    attempts=1, first_failed_at=now,
                )
                for r in rejections
            ])  # fmt: skip
            self.rejected += len(rejections)
            for stage in {r.stage for r in rejections}:
                self.events.rejected(self.pid, stage, sum(1 for r in rejections if r.stage == stage))
        if passed:
            await self.writer.write(passed)
        return len(passed)

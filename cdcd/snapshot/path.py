"""The per-destination write path of snapshot and repair rows: the same one streamed changes take.

``DestinationPath.write(events)``: the common stage chain (what ``SharedReader`` runs once per read
batch: masking) -> the destination's own chain (what its ``Branch`` runs: validation) ->
rejections to the dead-letter store (validation queue / staleness audit, as ``Branch`` files them)
-> ``SinkWriter`` (retry with backoff, the destination's circuit breaker, ``BadRows`` rows
dead-lettered after ``max_attempts``) -> ``Sink.write`` (the version guard decides by write time).

``stage_chains(cfg, table, destination)`` builds both chains; it is the single place snapshot,
reconcile and repair get their stages from.
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
from cdcd.sinks import Sink
from cdcd.stages import Chain
from cdcd.state.deadletter import DeadLetterStore

__all__ = ["DestinationPath", "stage_chains"]


def stage_chains(cfg: Config, table: TableConfig, destination: str) -> tuple[Chain, Chain]:
    """(common chain, destination chain) of ``table`` in ``destination``: the stages the daemon
    gives the table's ``SharedReader`` and the destination's ``Branch``."""
    del cfg, table, destination  # the daemon configures no stage yet: both chains are empty
    return Chain(), Chain()


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
    ) -> None:
        clock = SystemClock()
        self.destination = destination
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
            set_state=lambda _state: None,
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

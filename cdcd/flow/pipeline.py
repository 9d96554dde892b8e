"""``Pipeline``: one destination of one stream group with a reader of its own.

The daemon runs a ``SharedReader`` per (table, stream group) with one ``Branch`` per destination
(``cdcd.flow.reader``, ``cdcd.flow.branch``). ``Pipeline`` is the same machinery with exactly one
branch, for embedding and tests: ``run()`` reads, applies and commits until the group is done or
``close()``/``terminate()``; ``status()``, ``commit_now()`` and ``state`` are the branch's. With a
single branch nothing detaches: a slow destination simply slows this pipeline's reading.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from cdcd.flow.branch import Branch, BranchConfig, default_rejection_kind
from cdcd.flow.clock import Clock
from cdcd.flow.contracts import BatchSink, FlowEvents, PipelineState, PipelineStatus, SourceFactory
from cdcd.flow.reader import SharedReader
from cdcd.flow.retry import CircuitBreaker
from cdcd.stages import RejectionLike, Stage, StageFn
from cdcd.state.checkpoints import CheckpointStore, GroupRef
from cdcd.state.deadletter import DeadLetterStore, Kind

__all__ = ["Pipeline", "PipelineConfig", "default_rejection_kind"]

PipelineConfig = BranchConfig


class Pipeline:
    """A ``SharedReader`` with a single ``Branch``. See the module docstring."""

    def __init__(
        self,
        *,
        destination: str,
        group: GroupRef,
        mapping: Any,
        source: SourceFactory,
        sink: BatchSink,
        checkpoints: CheckpointStore,
        deadletters: DeadLetterStore,
        breaker: CircuitBreaker | None = None,
        stages: Sequence[StageFn | Stage] = (),
        config: BranchConfig | None = None,
        clock: Clock | None = None,
        events: FlowEvents | None = None,
        rejection_kind: Callable[[RejectionLike], Kind] = default_rejection_kind,
    ) -> None:
        self.branch = Branch(
            destination=destination, group=group, mapping=mapping, sink=sink, checkpoints=checkpoints,
            deadletters=deadletters, breaker=breaker, stages=stages, config=config, clock=clock,
            events=events, rejection_kind=rejection_kind,
        )  # fmt: skip
        self.reader = SharedReader(
            group=group, source=source, expected=1, clock=self.branch.clock,
            retry=self.branch.config.retry, join_grace=None,
        )  # fmt: skip
        self.destination = destination
        self.group = group
        self.mapping = mapping
        self.pid = self.branch.pid

    @property
    def state(self) -> PipelineState:
        return self.branch.state

    async def run(self) -> None:
        """Replicate until the group is done, ``close()``/``terminate()``, or a non-retriable
        error (raised here). Call once."""
        reading = asyncio.ensure_future(self.reader.run())
        try:
            await self.branch.run(self.reader)
        finally:
            if not reading.done():
                reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def close(self, deadline: float | None = None) -> None:
        await self.branch.close(deadline)

    def terminate(self) -> None:
        self.branch.terminate()

    async def commit_now(self) -> bool:
        return await self.branch.commit_now()

    def status(self) -> PipelineStatus:
        status = self.branch.status()
        if status.last_error is None and self.reader.last_error is not None:
            status.last_error = self.reader.last_error
        return status

"""Checkpoints of one destination branch kept in two places: Redis and the destination itself.

Redis (``cdcd.state.CheckpointStore``) can lose its state: a restart without persistence, a
``FLUSHALL``, a failover to an empty replica. A destination that records what it applied
(``cdcd.sinks.offsets.RecordsApplied``: PostgreSQL, TimescaleDB, ClickHouse) keeps those positions
in the same transaction as its data (ClickHouse: an insert after the data under the batch's
token), so it always knows exactly how far it got.

``DestinationCheckpoints`` is what a ``Branch`` uses as its checkpoint store; it wraps both:

* **load**: per stream, the rule of ``choose_start``: **the destination's position wins whenever
  it has one**; Redis is used only for streams the destination has no record of (for instance the
  first start after upgrading to a cdcd that records positions). The destination is authoritative
  for what was applied:

  - destination ahead of Redis: normal (Redis is saved every ``checkpoint_interval``, the
    destination with every batch), or Redis came back from an older snapshot: resuming at the
    destination's position re-applies nothing and skips nothing;
  - Redis ahead of the destination: cannot happen while both are intact (below: positions reach
    Redis only after the destination recorded them), so the destination lost data (restored from
    a backup, failed over to a lagging replica) together with its positions: resuming at the
    destination's position re-applies what it lost instead of skipping it;
  - neither: the stream starts at the start floor (``Branch.floor_time``), which the daemon also
    restores from the destination (``start_ms`` of its newest generation) when Redis lost it.

* **save**: positions go to the destination first (an offsets-only transaction, only for streams
  whose position moved past what the destination already recorded with its data: windows without
  a data write, rejected or filtered events), then to Redis. So Redis never holds a position the
  destination lacks, and a destination restarted from its own positions never re-reads a long
  idle stretch.

* ``sink``: the destination's sink as the branch writes through it: each write records the
  positions it completes (handed in by the branch) and remembers them, so ``save`` skips streams
  the data writes already recorded.

``is_done``/``mark_done``/``forget`` stay in Redis only. After Redis lost its "generation done"
markers the branch re-reads a finished generation from the destination's positions (its end),
which applies nothing, and marks it done again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cdcd.events import ChangeEvent, Position
from cdcd.flow.contracts import WriteOutcomeLike
from cdcd.sinks.offsets import Applied, RecordsApplied, newest
from cdcd.state.checkpoints import CheckpointStore, GroupRef

__all__ = ["DestinationCheckpoints", "RecordingSink", "choose_start", "records_applied"]

log = logging.getLogger(__name__)


def records_applied(sink: object) -> bool:
    """Does ``sink`` record applied positions (``RecordsApplied``)?"""
    return isinstance(sink, RecordsApplied)


def choose_start(
    redis: Mapping[bytes, Position], destination: Mapping[bytes, Position]
) -> dict[bytes, Position]:
    """Where each stream resumes: the destination's position when it holds one, else Redis's
    (see the module docstring for why this is the only safe choice)."""
    out = dict(redis)
    out.update(destination)
    return out


class RecordingSink:
    """The branch's view of a ``RecordsApplied`` sink: ``write(mapping, events, positions)``
    records ``positions`` with the data and remembers them in the owning store."""

    records_applied = True  # the branch hands positions to write()

    def __init__(self, owner: DestinationCheckpoints) -> None:
        self.owner = owner
        self.name = owner.sink.name

    async def write(
        self, mapping: Any, events: Sequence[ChangeEvent], positions: Mapping[bytes, Position] | None = None
    ) -> WriteOutcomeLike:
        applied = self.owner.applied(positions) if positions else None
        outcome = await self.owner.sink.write(mapping, events, applied=applied)
        if applied is not None:
            self.owner.note_recorded(applied.positions)
        return outcome  # type: ignore[no-any-return]


class DestinationCheckpoints:
    """Checkpoint store of ONE branch (destination, mapping, group); see the module docstring.
    Has the methods of ``CheckpointStore`` the branch and committer call."""

    def __init__(
        self, store: CheckpointStore, sink: RecordsApplied, mapping: Any, group: GroupRef, *, start_ms: int
    ) -> None:
        self.store = store
        self.sink = sink
        self.mapping = mapping
        self.group = group
        self.start_ms = max(int(start_ms), group.generation)
        self.recorded: dict[bytes, Position] = {}  # what the destination holds (as far as we know)
        self.writer = RecordingSink(self)

    def applied(self, positions: Mapping[bytes, Position]) -> Applied:
        return Applied(positions=dict(positions), start_ms=self.start_ms)

    def note_recorded(self, positions: Mapping[bytes, Position]) -> None:
        self.recorded = newest(self.recorded, positions)

    async def load(self, dest: str, group: GroupRef) -> dict[bytes, Position]:
        saved = await self.store.load(dest, group)
        held = await self.sink.load_applied(self.mapping, group.generation, list(group.streams))
        self.recorded = dict(held)
        start = choose_start(saved, held)
        restored = [s for s in held if s not in saved]
        behind = [s for s, p in saved.items() if s in held and held[s].sort_key() < p.sort_key()]
        if restored or behind:
            log.warning(
                "%s %s group %s: positions taken from the destination for %d stream(s) Redis has "
                "no checkpoint for and %d stream(s) where the destination is behind Redis",
                dest, group.table, group.key, len(restored), len(behind),
            )  # fmt: skip
        return start

    async def is_done(self, dest: str, group: GroupRef) -> bool:
        return await self.store.is_done(dest, group)

    async def save(self, dest: str, group: GroupRef, positions: Mapping[bytes, Position]) -> None:
        """Record in the destination what it lacks, then save to Redis (in that order)."""
        lacking = {
            s: p
            for s, p in positions.items()
            if (q := self.recorded.get(s)) is None or q.sort_key() < p.sort_key()
        }
        if lacking:
            await self.sink.record_applied(self.mapping, self.applied(lacking))
            self.note_recorded(lacking)
        await self.store.save(dest, group, positions)

    async def mark_done(self, dest: str, group: GroupRef) -> None:
        await self.store.mark_done(dest, group)

    async def forget(self, dest: str, group: GroupRef) -> None:
        await self.store.forget(dest, group)

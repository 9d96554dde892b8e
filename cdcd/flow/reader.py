"""``SharedReader``: one read of a (table, stream group) for every destination (style.md §7.4).

Per (table, stream group) one shared reader per replica reads the CDC log and decodes each row
once, runs the stages that do not depend on a destination (``common``: masking) once, and hands
each batch to every *attached* ``Branch`` (one per destination, ``cdcd.flow.branch``)::

    source(delivered) -> common stages -> branch.offer() for each attached branch
                                          (its own stages, buffer, writer, checkpoint)

* **Start.** The reader waits until every expected destination has arrived (joined, or left
  because its group is already done) or ``join_grace`` has passed (a destination that is down
  must not hold back the others). It then starts from the per-stream minimum of the arrived
  branches' positions; a branch more than ``rejoin_gap`` seconds behind the front starts
  detached instead of dragging everyone back. A branch that arrives later starts detached.
* **Detach.** A branch whose buffer stays full for ``detach_after`` seconds while another attached
  branch has nothing to write (and the process is not simply out of CPU: ``busy``) is detached: the reader goes on without it, and the branch reads on
  its own cursor (catching up) from exactly the last position it was handed. With one attached
  branch there is nobody to hold back: the reader just waits (backpressure).
* **Rejoin.** A catching-up branch asks after each of its batches; once its position is at or
  past the reader's on every stream it waits until its writer keeps up (its buffer at most half
  full: else it would fill up and detach again at once) and asks again; it is attached if its
  position still is at or past the reader's (``delivered`` moves *before* a batch is
  offered, so no batch can slip between the two). While no branch is attached the reader stops
  reading; the first branch to rejoin moves it to its own position.
* **End.** When the source ends (the generation is closed and fully read) attached branches are
  told (``source_ended``); detached ones finish on their own readers. A non-retriable source or
  common-stage error fails every attached branch; retriable ones re-open the source with backoff
  from ``delivered``. A branch whose own stage raises fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from cdcd.events import EventBatch, Position, timeuuid_to_micros
from cdcd.flow.branch import Branch, aclose
from cdcd.flow.clock import Clock, SystemClock, wait_first
from cdcd.flow.contracts import SourceFactory
from cdcd.flow.retry import RetryPolicy, is_retriable
from cdcd.ops import tracing
from cdcd.stages import Chain, Stage, StageFn
from cdcd.state.checkpoints import GroupRef

__all__ = ["SharedReader"]

log = logging.getLogger(__name__)


class SharedReader:
    """Reads one stream group once for every destination branch. See the module docstring."""

    def __init__(
        self,
        *,
        group: GroupRef,
        source: SourceFactory,
        stages: Sequence[StageFn | Stage] = (),
        expected: int = 1,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        detach_after: float = 2.0,
        join_grace: float | None = 5.0,
        rejoin_gap: float = 60.0,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.group = group
        self.source = source
        self.common = Chain(stages)
        self.expected = expected
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.detach_after = detach_after
        self.join_grace = join_grace
        self.rejoin_gap = rejoin_gap
        self.busy = busy  # the process itself is CPU-bound (cdcd.flow.load.LoopLoad.busy)
        self.branches: list[Branch] = []  # joined and not left, attached or catching up
        self.delivered: dict[bytes, Position] = {}  # per stream, the last position handed on
        self.started = False  # reading (start positions fixed)
        self.ended = False  # the source ended: the generation is fully read
        self.closed = False  # run() returned or is returning: no more reading
        self.last_error: str | None = None
        self._arrived: set[int] = set()
        self._changed = asyncio.Event()  # a branch arrived, left, detached or rejoined
        self._task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------------------- membership

    def join(self, branch: Branch) -> None:
        """Register ``branch`` (its ``seen`` is its start). Before reading starts it is placed at
        the start; afterwards it starts catching up, unless it is already at or past the reader."""
        self._arrived.add(id(branch))
        self.branches.append(branch)
        if self.started and not self._can_attach(branch):
            if branch.catch_up is None:
                raise RuntimeError(f"{branch.pid}: joined a running reader but has no catch-up source")
            branch.set_mode("catching-up", "joined late")
        else:
            branch.set_mode("shared", "joined", ahead=self.delivered if self.started else None)
        self._changed.set()

    def leave(self, branch: Branch) -> None:
        """``branch`` stops (done, closed, failed): it takes no more batches. A branch that
        leaves without joining (its group was already done) counts as arrived."""
        self._arrived.add(id(branch))
        if branch in self.branches:
            self.branches.remove(branch)
        self._changed.set()
        if self.started and not self.branches and self._task is not None and not self._task.done():
            self._task.cancel()  # nobody left to read for (the source may be waiting for new rows)

    def try_rejoin(self, branch: Branch) -> bool:
        """Called by a catching-up branch after each batch it read itself. Attaches it again when
        it has reached the reader on every stream (True). Synchronous: nothing moves meanwhile."""
        if not self.reached(branch):
            return False
        if not self.attached():
            self.delivered = dict(branch.seen)  # nobody reads: resume from this branch's position
        branch.set_mode("shared", "rejoined", ahead=self.delivered)
        self._changed.set()
        return True

    def reached(self, branch: Branch) -> bool:
        """``branch`` could rejoin now as far as positions go (see ``try_rejoin``)."""
        if self.ended or self.closed or branch not in self.branches:
            return False
        return not self.attached() or self._can_attach(branch)

    def attached(self) -> list[Branch]:
        return [b for b in self.branches if b.mode == "shared"]

    def _can_attach(self, branch: Branch) -> bool:
        seen = branch.seen
        for s, p in self.delivered.items():
            mine = seen.get(s)
            if mine is None or mine.sort_key() < p.sort_key():
                return False
        return True

    # ------------------------------------------------------------------------------------ read

    async def run(self) -> None:
        """Read until the source ends or every branch has left. Raises non-retriable errors
        (after failing every attached branch with them)."""
        self._task = asyncio.current_task()
        try:
            await self._gather()
            self._place()
            self.started = True
            attempt = 0
            while self.branches and not self.ended:
                if not self.attached():
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                it = self.source(dict(self.delivered))
                try:
                    paused = False
                    async for batch in it:
                        attempt = 0
                        await self._fan_out(batch)
                        if not self.attached():
                            paused = True
                            break
                    if not paused:
                        self.ended = True
                except Exception as exc:
                    if not is_retriable(exc):
                        raise
                    attempt += 1
                    self.last_error = f"source: {exc}"
                    log.warning(
                        "source read failed, re-opening: %s %s: %s", self.group.table, self.group.key, exc
                    )
                    await self.clock.sleep(self.retry.delay(attempt))
                finally:
                    await aclose(it)
            if self.ended:
                for b in self.attached():
                    b.source_ended()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            for b in self.attached():
                b.shared_failed(exc)
            raise
        finally:
            self.closed = True

    async def _gather(self) -> None:
        """Wait until every expected branch arrived or ``join_grace`` passed."""
        deadline = self.clock.monotonic() + (self.join_grace or 0.0)
        while len(self._arrived) < self.expected:
            if self.join_grace is None:  # wait for every expected branch, however long
                self._changed.clear()
                await self._changed.wait()
                continue
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return
            self._changed.clear()
            await wait_first(self.clock, self._changed.wait(), left)

    def _place(self) -> None:
        """Fix the start: the per-stream minimum over the branches near the front; branches
        further behind than ``rejoin_gap`` catch up on their own."""
        if not self.branches:
            return

        def oldest(b: Branch) -> float:
            seen = b.seen
            if len(seen) < len(self.group.streams):
                return float("-inf")  # a stream starts at the reader's floor: the oldest possible
            return min(timeuuid_to_micros(p.time) for p in seen.values()) / 1e6

        front = max(oldest(b) for b in self.branches)
        near = [b for b in self.branches if oldest(b) >= front - self.rejoin_gap]
        near += [b for b in self.branches if b not in near and b.catch_up is None]
        for b in self.branches:
            if b not in near:
                b.set_mode("catching-up", "far behind at start")
        start: dict[bytes, Position] = {}
        for s in self.group.streams:
            positions = [b.seen.get(s) for b in near]
            if any(p is None for p in positions):
                continue  # the reader's own floor applies to this stream
            start[s] = min((p for p in positions if p is not None), key=Position.sort_key)
        self.delivered = start
        for b in near:
            b.set_mode("shared", "start", ahead=start)

    async def _fan_out(self, batch: EventBatch) -> None:
        with tracing.in_batch(batch.trace):  # the branches' stages and buffers see the batch's trace
            await self._fan_out_traced(batch)

    async def _fan_out_traced(self, batch: EventBatch) -> None:
        observe = tracing.stage_observer(batch.trace, table=self.group.table, group=self.group.key)
        events, rejections = self.common.run(batch.events, observe)
        await self.common.settle()  # (raises before ``delivered`` moves: the batch is read again)
        self.delivered.update(batch.upto)  # first: a branch rejoining meanwhile must include this batch
        targets = self.attached()
        detach_after = self.detach_after if len(targets) > 1 else None
        for b in targets:
            if b.mode != "shared" or b not in self.branches:
                continue
            others = [o for o in targets if o is not b]

            def waiting(others: list[Branch] = others) -> bool:
                # Another branch waits for input, and not merely because this process is out of
                # CPU (then a second read would only slow everyone down).
                return (
                    any(o.mode == "shared" and o.taking_input and o.hungry() for o in others)
                    and not self.busy()
                )

            try:
                ok = await b.offer(
                    events, rejections, batch.upto, len(batch.events),
                    detach_after=None if b.catch_up is None else detach_after, others_waiting=waiting,
                )  # fmt: skip
            except Exception as exc:  # the branch's own stage: that branch fails alone
                self.branches.remove(b)
                b.shared_failed(exc)
                continue
            if not ok and b.taking_input and b in self.branches:
                b.set_mode("catching-up", "buffer full")

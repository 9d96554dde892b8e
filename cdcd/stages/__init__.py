"""Stages: pure, synchronous steps between the reader and the writers (style.md §7.3).

A stage takes a sequence of ``ChangeEvent`` and returns what passed and what it rejected; every
input lands in exactly one of the two. Stages do no I/O: they build their plans in ``__init__``
(compiled checks, masking rules) and only compute in ``process``. Rejections are written by the
destination branch to the validation queue (or the staleness audit for stage ``staleness``) with
the original event and the reason, and count as done for checkpoints.

Where a stage runs:

* ``Chain`` of the *shared* stages (those that do not depend on a destination, e.g. masking) runs
  once per read batch in the ``SharedReader`` (``cdcd.flow.reader``), before the fan-out; a
  catch-up reader of a detached branch runs the same chain.
* Each destination ``Branch`` (``cdcd.flow.branch``) runs its own ``Chain`` (validation against
  that destination's table, staleness) on what the shared chain passed.

A stage is either an object with ``process(events) -> StageResult`` or a plain function
returning ``(passed, rejected)`` (or anything with ``.passed``/``.rejected``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from cdcd.events import ChangeEvent

__all__ = ["Chain", "Rejection", "RejectionLike", "Stage", "StageFn", "StageOutput", "StageResult"]


class RejectionLike(Protocol):
    @property
    def event(self) -> ChangeEvent: ...

    @property
    def stage(self) -> str: ...

    @property
    def reason(self) -> str: ...


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """One event a stage refused: the original event, the stage's name and why."""

    event: ChangeEvent
    stage: str
    reason: str


class StageResult(msgspec.Struct, kw_only=True):
    passed: list[ChangeEvent]
    rejected: list[RejectionLike]


class _StageResultLike(Protocol):
    @property
    def passed(self) -> Sequence[ChangeEvent]: ...

    @property
    def rejected(self) -> Sequence[RejectionLike]: ...


StageOutput = tuple[Sequence[ChangeEvent], Sequence[RejectionLike]] | _StageResultLike
StageFn = Callable[[Sequence[ChangeEvent]], StageOutput]


class Stage(Protocol):
    """A named stage object. Pure and synchronous; every input lands in exactly one output."""

    name: str

    def process(self, events: Sequence[ChangeEvent]) -> StageOutput: ...


def _name(stage: StageFn | Stage) -> str:
    return str(getattr(stage, "name", None) or getattr(stage, "__name__", None) or type(stage).__name__)


def _as_fn(stage: StageFn | Stage) -> StageFn:
    process = getattr(stage, "process", None)
    return process if callable(process) else stage  # type: ignore[return-value]


class Chain:
    """Stages applied in order. ``run(events)`` returns ``(passed, rejections)``; an empty chain
    hands the input back untouched (no copy: the hot path of a table without stages)."""

    __slots__ = ("_fns", "_settles", "stages")

    def __init__(self, stages: Sequence[StageFn | Stage] = ()) -> None:
        self.stages = tuple(stages)
        self._fns = tuple(_as_fn(s) for s in self.stages)
        self._settles = tuple(f for s in self.stages if callable(f := getattr(s, "settle", None)))

    def __bool__(self) -> bool:
        return bool(self._fns)

    def run(
        self,
        events: Sequence[ChangeEvent],
        observe: Callable[[str, int, int, int, int], None] | None = None,
    ) -> tuple[Sequence[ChangeEvent], list[RejectionLike]]:
        """Raises RuntimeError when a stage loses or invents events (a bug in the stage).
        ``observe(stage, start_ns, end_ns, passed, rejected)`` is told each stage's run (tracing)."""
        rejections: list[RejectionLike] = []
        for stage, fn in zip(self.stages, self._fns, strict=True):
            if not events:
                break
            began = time.time_ns() if observe is not None else 0
            out = fn(events)
            passed, rejected = out if isinstance(out, tuple) else (out.passed, out.rejected)
            if len(passed) + len(rejected) != len(events):
                raise RuntimeError(
                    f"stage {stage!r} returned {len(passed)} passed + {len(rejected)} rejected "
                    f"for {len(events)} events; every event must land in exactly one"
                )
            if observe is not None:
                observe(_name(stage), began, time.time_ns(), len(passed), len(rejected))
            events = passed
            rejections.extend(rejected)
        return events, rejections

    async def settle(self) -> None:
        """Await each stage's optional ``settle()``: I/O a stage needs done before what ``run``
        returned may be handed on (``MaskStage`` stores new tokens in the vault). Call it after
        ``run`` and before handing anything on; a raise means: hand nothing on, read again."""
        for settle in self._settles:
            await settle()

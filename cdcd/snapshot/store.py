"""Snapshot progress in Redis, per (destination, table)::

    <prefix>:snapshot:<destination>:<table>   hash
        ranges     number of token ranges the snapshot was cut into (fixed at its start)
        started    unix time of the first start
        s:<i>      range i was started (present without r:<i>: a run stopped in the middle of it)
        r:<i>      rows written from range i (present = range i is done)
        finished   unix time the last range was done (present = the snapshot is complete)

A range is marked done only after every row read from it has been written, so a kill -9 at any
moment redoes at most the ranges that were in progress (the writes are idempotent).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

__all__ = ["SnapshotState", "SnapshotStore"]


class SnapshotState(msgspec.Struct, kw_only=True):
    ranges: int
    done: dict[int, int]  # range index -> rows written
    begun: set[int] = set()  # ranges a run started (done or not)
    started: float | None = None
    finished: float | None = None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class SnapshotStore:
    def __init__(self, client: Any, *, prefix: str = "cdcd") -> None:
        self.client = client
        self.prefix = prefix

    def key(self, destination: str, table: str) -> str:
        return f"{self.prefix}:snapshot:{destination}:{table}"

    async def load(self, destination: str, table: str) -> SnapshotState | None:
        raw = await self.client.hgetall(self.key(destination, table))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        return SnapshotState(
            ranges=int(fields["ranges"]),
            done={int(k[2:]): int(v) for k, v in fields.items() if k.startswith("r:")},
            begun={int(k[2:]) for k in fields if k.startswith("s:")},
            started=float(fields["started"]) if "started" in fields else None,
            finished=float(fields["finished"]) if "finished" in fields else None,
        )

    async def begin(self, destination: str, table: str, ranges: int) -> SnapshotState:
        """The saved state, or a new one cut into ``ranges`` ranges."""
        state = await self.load(destination, table)
        if state is not None:
            return state
        now = time.time()
        key = self.key(destination, table)
        await self.client.hsetnx(key, "ranges", ranges)
        await self.client.hsetnx(key, "started", now)
        state = await self.load(destination, table)
        assert state is not None
        return state

    async def range_started(self, destination: str, table: str, index: int) -> None:
        await self.client.hset(self.key(destination, table), f"s:{index}", 1)

    async def range_done(self, destination: str, table: str, index: int, rows: int) -> None:
        await self.client.hset(self.key(destination, table), f"r:{index}", rows)

    async def finish(self, destination: str, table: str) -> None:
        await self.client.hset(self.key(destination, table), "finished", time.time())

    async def reset(self, destination: str, table: str) -> None:
        await self.client.delete(self.key(destination, table))

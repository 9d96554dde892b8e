"""StreamDiscovery over a fake session: ttl/since filtering, empty generations, tablets grouping.
(Both paths are also covered against the emulator: vnodes in tests/integration/test_reader.py,
tablets in tests/integration/test_tablets_reader.py.)"""

from __future__ import annotations

import datetime
from typing import Any

from cdcd.scylla.generations import (
    TABLET_STREAMS,
    TABLET_TIMESTAMPS,
    USES_TABLETS,
    VNODE_STREAMS,
    VNODE_TIMESTAMPS,
    StreamDiscovery,
)

S = 1000  # ms


def dt(ms: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=ms)


class _Meta:
    def all_hosts(self) -> list[str]:
        return ["h"]


class _Cluster:
    metadata = _Meta()


class FakeSession:
    cluster = _Cluster()

    def __init__(self, *, tablets: bool, gens: dict[int, list[list[bytes]]]) -> None:
        self.tablets = tablets
        self.gens = gens
        self.calls: list[tuple[str, list[Any]]] = []

    async def prepare(self, query: str) -> str:
        return query

    async def execute(self, query: str, params: list[Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
        self.calls.append((query, list(params or [])))
        if query == USES_TABLETS:
            return [{"initial_tablets": 0 if self.tablets else None}]
        if query == VNODE_TIMESTAMPS:
            return [{"time": dt(g)} for g in sorted(self.gens, reverse=True)]
        if query == TABLET_TIMESTAMPS:
            assert params == ["ks", "t"]
            return [{"timestamp": dt(g)} for g in sorted(self.gens, reverse=True)]
        if query == VNODE_STREAMS:
            return [{"range_end": i, "streams": s} for i, s in enumerate(self.gens[params[0]])]  # type: ignore[index]
        if query == TABLET_STREAMS:
            return [{"stream_id": sid} for s in self.gens[params[2]] for sid in s]  # type: ignore[index]
        raise AssertionError(query)


def sid(token: int, n: int) -> bytes:
    return token.to_bytes(8, "big", signed=True) + n.to_bytes(8, "big")


async def test_vnode_groups_skip_expired_and_empty_generations() -> None:
    now = 1_000_000 * S
    gens = {
        now - 100_000 * S: [[sid(1, 1)]],  # ended 10000 s ago: older than the 9000 s ttl
        now - 10_000 * S: [[sid(2, 1), sid(3, 1)], [sid(4, 1)]],
        now - 5_000 * S: [],  # published timestamp, no streams yet
        now + 60 * S: [[sid(5, 1)]],  # future generation, already published
    }
    d = StreamDiscovery(FakeSession(tablets=False, gens=gens), clock=lambda: now / 1000)  # type: ignore[arg-type]
    groups = await d.groups("ks.t", since_ms=0, ttl_s=9000)
    assert [(g.generation, g.end, g.streams, g.key) for g in groups] == [
        (now - 10_000 * S, now - 5_000 * S, (sid(2, 1), sid(3, 1)), f"{now - 10_000 * S}:0"),
        (now - 10_000 * S, now - 5_000 * S, (sid(4, 1),), f"{now - 10_000 * S}:1"),
        (now + 60 * S, None, (sid(5, 1),), f"{now + 60 * S}:0"),
    ]
    assert await d.next_generation("ks.t", now - 10_000 * S) == now - 5_000 * S
    assert await d.next_generation("ks.t", now + 60 * S) is None
    # since "now": generations that ended before now are skipped; ttl 0 = no ttl limit
    assert {g.generation for g in await d.groups("ks.t", since_ms=now, ttl_s=0)} == {now + 60 * S}
    assert {g.generation for g in await d.groups("ks.t", since_ms=0, ttl_s=0)} == {
        now - 100_000 * S, now - 10_000 * S, now + 60 * S
    }  # fmt: skip


async def test_tablet_stream_sets_are_grouped_in_token_order() -> None:
    now = 1_000_000 * S
    streams = [sid(t, 1) for t in (50, -7, 3, 100, -(2**63))]
    gens = {now - 10 * S: [streams]}
    session = FakeSession(tablets=True, gens=gens)
    d = StreamDiscovery(session, tablet_group_size=2, clock=lambda: now / 1000)  # type: ignore[arg-type]
    assert await d.uses_tablets("ks")
    groups = await d.groups("ks.t", since_ms=0, ttl_s=86400)
    assert [g.streams for g in groups] == [
        (sid(-2**63, 1), sid(-7, 1)), (sid(3, 1), sid(50, 1)), (sid(100, 1),)
    ]  # fmt: skip
    assert all(g.table == "ks.t" and g.end is None for g in groups)
    assert (TABLET_STREAMS, ["ks", "t", now - 10 * S]) in session.calls

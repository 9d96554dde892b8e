"""Redis down (R-42, R-50): a real ``cdcd run`` whose Redis is killed mid-run stops every stream
group before its lease can expire (it cannot renew), and when Redis is back (same data: AOF)
takes the leases again and resumes from the checkpoints well within 60 s; nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec, wait_for
from tests.e2e.workload import Workload
from tests.integration.test_checkpoints import _OwnRedis

ACTIVE = ("starting", "running", "retrying", "circuit-open", "draining")


@pytest.fixture
def own_redis() -> Iterator[_OwnRedis]:
    server = _OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(own_redis: _OwnRedis) -> str:
    """This module's cdcd uses a Redis the test may kill and restart (overrides the session one)."""
    return f"redis://127.0.0.1:{own_redis.port}/0"


def _running_groups(status: Any) -> set[str]:
    out = set()
    for table in status["tables"].values():
        for dest in table["destinations"].values():
            out |= {g for g, st in dest["groups"].items() if st["state"] in ACTIVE}
    return out


@pytest.mark.slow  # ~45 s
async def test_redis_down_stops_groups_and_they_resume_when_it_returns(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, own_redis: _OwnRedis
) -> None:
    workload = Workload(cql, "rdown.t", seed=31, partitions=30, rows_per_partition=20)
    workload.create()
    cdcd = make_cdcd([TableSpec("rdown.t", "dst.t")], ConfigOptions(confidence_window="2s"))
    cdcd.start()
    cdcd.wait_ready()
    wait_for(lambda: len(cdcd.status()["leases"]) == 8, 30, "8 leases", 0.2)
    workload.run(1500, chunk=300)

    own_redis.kill()
    killed = time.monotonic()
    wait_for(lambda: not cdcd.status()["leases"] and not _running_groups(cdcd.status()), 15, "groups stopped")
    stopped = time.monotonic() - killed
    # renewed every TTL/3 (10 s / 3): the last renewal was at most that long before the kill,
    # and work stops a quarter TTL before expiry
    assert stopped < 10 - 2.5 + 0.5, stopped
    workload.run(1500, chunk=300)  # the source goes on meanwhile
    await asyncio.sleep(max(0.0, 12 - (time.monotonic() - killed)))

    own_redis.start()
    back = time.monotonic()
    wait_for(lambda: len(cdcd.status()["leases"]) == 8, 60, "leases taken again", 0.2)
    resumed = time.monotonic() - back
    assert resumed < 60
    workload.run(500, chunk=250)
    await wait_converged(cql, source_schema(cql, "rdown.t"), pg_dsn, "dst.t", timeout=60)
    lost = [m for m in cdcd.log_messages() if m.get("message", "").startswith("lease lost")]
    assert len(lost) == 8 and {m["reason"] for m in lost} == {"not renewed in time"}
    assert cdcd.stop() == 0, cdcd.log_tail()
    print(f"\ngroups stopped {stopped:.1f} s after Redis died; leases back {resumed:.1f} s after it returned")

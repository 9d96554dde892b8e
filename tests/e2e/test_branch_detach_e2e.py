"""A destination down for 30 s detaches from the shared reader, catches up alone and rejoins.

One ``cdcd run`` replicates a steady workload into PostgreSQL and ClickHouse; the ClickHouse
endpoint is killed (``kill -9``) for 30 s mid-workload and restarted on the same port and data.

* PostgreSQL never waits for ClickHouse: its lag on ``/status`` stays under 5 s during the outage
  (and under 10 s while ClickHouse catches up, in the same process, on a 2-core machine).
* ClickHouse's branch detaches (``/status``: its groups' mode ``catching-up``), and once the
  endpoint is back it writes what it held, reads the log on its own from its own position, and
  rejoins the shared reader (every group ``shared`` again).
* Both equal the source; nothing is dead-lettered; cdcd exits 0.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from tests.e2e.ch_process import ClickHouseProcess
from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec
from tests.e2e.test_destination_outage_e2e import SteadyWriter
from tests.e2e.workload import Workload

SOURCE = TARGET = "detach.t"
OUTAGE = 30.0
PG_LAG_MAX = 5.0


def _sample(cdcd: CdcdProcess) -> dict[str, Any]:
    dests = cdcd.status()["tables"][SOURCE]["destinations"]
    return {
        "t": time.monotonic(),
        "lag": {d: v["lag_seconds"] for d, v in dests.items()},
        "modes": {d: v.get("modes", {}) for d, v in dests.items()},
        "state": {d: v["state"] for d, v in dests.items()},
    }


@pytest.mark.slow  # ~60 s; part of the default run
async def test_clickhouse_down_detaches_catches_up_alone_and_rejoins(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, tmp_path: Path
) -> None:
    ch = ClickHouseProcess(tmp_path / "ch-data", log_path=tmp_path / "clickhouse.log")
    ch.start()
    try:
        await _scenario(cql, make_cdcd, pg_dsn, ch)
    finally:
        ch.kill9()


async def _scenario(cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, ch: ClickHouseProcess) -> None:
    workload = Workload(cql, SOURCE, seed=4242, partitions=30, rows_per_partition=30)
    workload.create()
    schema = source_schema(cql, SOURCE)
    cdcd = make_cdcd(
        [TableSpec(SOURCE, TARGET, destinations=("pg", "ch"))],
        ConfigOptions(
            batch_max_wait="500ms",
            extra={
                "destinations": f'\n[destinations.ch]\ntype = "clickhouse"\nurl = "{ch.url}"\n',
                "pipeline": 'breaker.reset_timeout = "3s"\nqueue_size = 4\ndetach_after = "1s"',
            },
        ),
    )
    cdcd.start()
    cdcd.wait_ready()
    writer = SteadyWriter(workload)
    samples: list[dict[str, Any]] = []
    phase = ["before"]

    async def sampler() -> None:
        while True:
            s = await asyncio.to_thread(_sample, cdcd)
            s["phase"] = phase[0]
            samples.append(s)
            await asyncio.sleep(0.5)

    writer.start()
    sampling = asyncio.create_task(sampler())
    try:
        await asyncio.sleep(8)  # past the start-up transient
        ch.kill9()
        phase[0] = "outage"
        await asyncio.sleep(OUTAGE)
        ch.start()
        phase[0] = "back"
        began = time.monotonic()
        while True:
            assert cdcd.running(), cdcd.log_tail()
            s = samples[-1]
            if s["phase"] == "back" and set(s["modes"]["ch"]) == {"shared"} and (s["lag"]["ch"] or 99) < 5:
                break
            assert time.monotonic() - began < 120, f"ClickHouse did not rejoin: {samples[-3:]}"
            await asyncio.sleep(0.2)
        phase[0] = "after"
        await asyncio.sleep(3)
        result = writer.finish()
    finally:
        sampling.cancel()
        writer.halt()

    outage = [s for s in samples if s["phase"] == "outage"]
    assert len(outage) >= OUTAGE, f"only {len(outage)} /status polls during the outage"
    pg_lags = [s["lag"]["pg"] for s in outage]
    assert all(lag is not None and lag < PG_LAG_MAX for lag in pg_lags), f"PostgreSQL held back: {pg_lags}"
    # While ClickHouse catches up, both share one process's CPU: PostgreSQL may slow down a bit,
    # never to the lag of a destination held back by the other (the outage test's bound).
    later = [s["lag"]["pg"] for s in samples if s["phase"] in ("back", "after")]
    assert all(lag is not None and lag < 2 * PG_LAG_MAX for lag in later), f"PostgreSQL held back: {later}"
    assert any("catching-up" in s["modes"]["ch"] for s in outage), [s["modes"] for s in outage]
    assert all(set(s["modes"]["pg"]) == {"shared"} for s in samples), "PostgreSQL's branch detached"
    after = [s for s in samples if s["phase"] == "after"]
    assert after and all(set(s["modes"]["ch"]) == {"shared"} for s in after), after
    messages = cdcd.log_messages()
    detached = [m for m in messages if m.get("message", "").startswith("branch detached")]
    rejoined = [
        m for m in messages if m.get("message") == "branch reads shared" and m.get("reason") == "rejoined"
    ]
    assert detached and all(m["destination"] == "ch" for m in detached), detached[:3]
    assert rejoined and all(m["destination"] == "ch" for m in rejoined), rejoined[:3]

    assert result.ops["update"] > 100, result.ops
    await wait_converged(cql, schema, pg_dsn, TARGET, timeout=60)
    client = clickhouse_connect.get_client(host="127.0.0.1", port=ch.port, autogenerate_session_id=False)
    try:
        await wait_ch_converged(cql, schema, client, TARGET, timeout=60)
    finally:
        client.close()
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not [m for m in cdcd.log_messages() if "dead-letter" in m.get("message", "")], "dead-lettered"
    assert not cdcd.errors(), cdcd.errors()[:5]
    print(
        f"\nchanges={result.changes}; pg lag max {max(pg_lags):.2f}s; ch detached {len(detached)}x, "
        f"rejoined {len(rejoined)}x; ch modes during the outage "
        f"{sorted({m for s in outage for m in s['modes']['ch']})}"
    )

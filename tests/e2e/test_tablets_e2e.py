"""A tablet keyspace's table split and then merged (``ALTER TABLE ... WITH tablets =
{'min_tablet_count': N}``: a new stream set each time, every old stream closed) in the middle of a
random workload, next to a vnode keyspace's table in the same config: cdcd follows each stream set
change like a generation switch and both destinations equal their sources (scylla-cdc.md §4.5)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec
from tests.e2e.workload import Workload


def stream_sets(cql: Any, ks: str, table: str) -> list[Any]:
    q = "SELECT timestamp FROM system.cdc_timestamps WHERE keyspace_name = %s AND table_name = %s"
    return [r.timestamp for r in cql.execute(q, (ks, table))]


async def test_split_and_merge_mid_workload_beside_a_vnode_table(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str
) -> None:
    tab = Workload(cql, "tk.t", seed=31, partitions=40, rows_per_partition=30)
    vn = Workload(cql, "vk.t", seed=32, partitions=40, rows_per_partition=30)
    tab.create(tablets=True)
    vn.create(tablets=False)
    assert len(stream_sets(cql, "tk", "t")) == 1 and stream_sets(cql, "vk", "t") == []
    cdcd = make_cdcd(
        [TableSpec("tk.t", "dst.tk"), TableSpec("vk.t", "dst.vk")],
        ConfigOptions(
            confidence_window="1s", generation_poll="200ms", extra={"source": "tablet_group_size = 2"}
        ),
    )
    cdcd.start()
    cdcd.wait_ready()

    async def both(n: int) -> None:
        await asyncio.gather(
            asyncio.to_thread(tab.run, n, chunk=100), asyncio.to_thread(vn.run, n, chunk=100)
        )

    await both(1500)
    cql.execute("ALTER TABLE tk.t WITH tablets = {'min_tablet_count': 16}")  # split 4 -> 16
    await both(1500)
    cql.execute("ALTER TABLE tk.t WITH tablets = {'min_tablet_count': 2}")  # merge 16 -> 2
    await both(1500)
    assert len(stream_sets(cql, "tk", "t")) == 3

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    await wait_converged(cql, source_schema(cql, "tk.t"), pg_dsn, "dst.tk", timeout=90, alive=alive)
    await wait_converged(cql, source_schema(cql, "vk.t"), pg_dsn, "dst.vk", timeout=90, alive=alive)

    # Both stream set changes were followed as switches (tk.t only), in order.
    deadline = time.monotonic() + 20
    switches: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        switches = [m for m in cdcd.log_messages() if m.get("message") == "generation switch"]
        if len([m for m in switches if m.get("table") == "tk.t"]) >= 2:
            break
        await asyncio.sleep(0.3)
    tk = [m for m in switches if m.get("table") == "tk.t"]
    assert len(tk) == 2, switches
    assert tk[0]["new_generation"] == tk[1]["old_generation"] > tk[0]["old_generation"]
    assert not [m for m in switches if m.get("table") == "vk.t"]
    # The newest set's groups run: 2 tablets in groups of 2 -> one group for tk.t, 8 vnode groups.
    groups = cdcd.status()["tables"]["tk.t"]["destinations"]["pg"]["groups"]
    assert {k: g["streams"] for k, g in groups.items()} == {f"{tk[1]['new_generation']}:0": 2}
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()

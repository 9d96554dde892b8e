"""10k randomly interleaved changes (inserts, partial updates, null-setting, collection element
ops, UDT fields, static columns, row/partition/range deletes) through ``cdcd run``: the PostgreSQL
table equals the source table afterwards (R-01, R-02, R-04); in a vnode and in a tablet keyspace."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.compare import pg_connect, source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import TableSpec
from tests.e2e.workload import Workload


@pytest.mark.parametrize("tablets", [False, True], ids=["vnodes", "tablets"])
async def test_random_interleaving_hard_and_soft_deletes(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, tablets: bool
) -> None:
    hard = Workload(cql, "wl.hard", seed=20240601)
    soft = Workload(cql, "wl.soft", seed=7, partitions=20, rows_per_partition=30)
    hard.create(tablets=tablets)
    soft.create(keyspace=False)
    stream_sets = list(
        cql.execute(
            "SELECT timestamp FROM system.cdc_timestamps WHERE keyspace_name = 'wl' AND table_name = 'hard'"
        )
    )
    assert len(stream_sets) == (1 if tablets else 0)  # the tablet keyspace's table has its own streams
    cdcd = make_cdcd([TableSpec("wl.hard", "dst.hard"), TableSpec("wl.soft", "dst.soft", delete="soft")])
    cdcd.start()
    cdcd.wait_ready()

    done_hard = await asyncio.to_thread(hard.run, 10_000)
    await asyncio.to_thread(soft.run, 3_000)
    # The workload really covered every kind of change.
    for op in ("insert", "update", "set_null", "list_append", "list_prepend", "list_remove", "set_add",
               "set_remove", "map_put", "map_remove", "udt_field", "static", "row_delete", "range_delete",
               "partition_delete"):  # fmt: skip
        assert done_hard.ops[op] > 0, op

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    snap = await wait_converged(
        cql, source_schema(cql, "wl.hard"), pg_dsn, "dst.hard", timeout=120, alive=alive
    )
    assert len(snap.rows) > 100 and snap.static
    await wait_converged(cql, source_schema(cql, "wl.soft"), pg_dsn, "dst.soft", timeout=60, alive=alive)

    conn = await pg_connect(pg_dsn)
    try:
        # Soft deletes kept rows flagged (the comparison skips them); hard deletes left none.
        assert await conn.fetchval("SELECT count(*) FROM dst.soft WHERE _cdc_deleted") > 0
        assert await conn.fetchval("SELECT count(*) FROM dst.hard WHERE _cdc_deleted") == 0
    finally:
        await conn.close()

    status = cdcd.status()
    applied = status["tables"]["wl.hard"]["destinations"]["pg"]["events_applied"]
    assert applied >= done_hard.changes * 0.9  # range deletes/pairs may fold; no lower bound beyond that
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()

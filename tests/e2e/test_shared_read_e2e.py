"""One read, many writers, end to end: a real ``cdcd run`` against the emulator, which counts
what it serves from the CDC log tables (``EmulatorServer.log_stats``).

* With three destinations (PostgreSQL, ClickHouse, TimescaleDB) all shared, every log row is
  served exactly once: rows served equal rows in the log, and all three equal the source.
* ``[source] max_concurrent_reads`` and ``max_read_rate`` hold: with log answers delayed (so
  concurrent reads overlap as on a real cluster) and a backlog read from the earliest position,
  never more than the cap of log pages is in flight, and the rows served over time stay within
  the rate (plus one second of burst and one page per slot).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pytest

from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec, ch_ts_destinations, wait_for
from tests.e2e.workload import Workload


def _modes(cdcd: CdcdProcess, table: str) -> dict[str, dict[str, int]]:
    dests = cdcd.status()["tables"].get(table, {}).get("destinations", {})
    return {name: d.get("modes", {}) for name, d in dests.items()}


def _log_rows(cql: Any, table: str) -> int:
    ks, name = table.split(".")
    return int(cql.execute(f"SELECT count(*) FROM {ks}.{name}_scylla_cdc_log").one()[0])


@pytest.mark.slow  # ~30 s; part of the default run
async def test_each_log_row_is_read_once_for_three_destinations(  # noqa: PLR0917
    cql: Any,
    emulator: Any,
    make_cdcd: MakeCdcd,
    pg_dsn: str,
    ts_dsn: str,
    clickhouse_url: str,
    ch_database: str,
) -> None:
    workload = Workload(cql, "once.t", seed=88, partitions=30, rows_per_partition=30)
    workload.create()
    target = f"{ch_database}.t"
    destinations = ch_ts_destinations(clickhouse_url)
    cdcd = make_cdcd(
        [TableSpec("once.t", target, destinations=("pg", "ch", "ts"))],
        # A loaded test machine must not make a destination detach (that would read again), nor
        # delay a write past the confidence window (its log row would land behind the reader).
        ConfigOptions(
            confidence_window="3s",
            extra={"destinations": destinations, "pipeline": 'detach_after = "120s"'},
        ),
        env={"TS_DSN": ts_dsn},
    )
    cdcd.start()
    cdcd.wait_ready()
    # Every stream group reads shared for all three before the first change is written.
    groups = len(cdcd.status()["tables"]["once.t"]["destinations"]["pg"]["groups"])
    wait_for(
        lambda: (
            {d: m.get("shared", 0) for d, m in _modes(cdcd, "once.t").items()}
            == {"pg": groups, "ch": groups, "ts": groups}
        ),
        30,
        "all branches shared",
    )
    emulator.log_stats.reset()
    result = workload.run(3000, chunk=300)
    assert result.ops["update"] > 100 and result.ops["row_delete"] > 50, result.ops

    schema = source_schema(cql, "once.t")
    pg = await wait_converged(cql, schema, pg_dsn, target, timeout=90)
    await wait_converged(cql, schema, ts_dsn, target, timeout=90)
    u = urlsplit(clickhouse_url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    try:
        chs = await wait_ch_converged(cql, schema, client, target, timeout=90)
    finally:
        client.close()
    assert len(pg.rows) > 100 and len(chs.rows) == len(pg.rows)
    # Give the readers a poll or two past the last change, then compare what was served.
    await asyncio.sleep(1.5)
    served = emulator.log_stats.rows_by_table.get("once.t", 0)
    in_log = _log_rows(cql, "once.t")
    assert in_log >= 3000
    assert served == in_log, f"rows served {served} != rows in the log {in_log}: read more than once"
    assert _modes(cdcd, "once.t") == {
        "pg": {"shared": groups},
        "ch": {"shared": groups},
        "ts": {"shared": groups},
    }
    assert not [m for m in cdcd.log_messages() if m.get("message", "").startswith("branch detached")]
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()[:5]
    print(f"\nlog rows {in_log}, served {served}, {emulator.log_stats.queries} log pages, {groups} groups")


@pytest.mark.slow  # ~20 s; part of the default run
async def test_read_caps_hold(cql: Any, emulator: Any, make_cdcd: MakeCdcd, pg_dsn: str) -> None:
    max_reads, rate, fetch = 2, 1500, 100
    workload = Workload(cql, "caps.t", seed=5, partitions=40, rows_per_partition=20)
    workload.create()
    workload.run(3000, chunk=300)  # a backlog, read from the earliest position
    in_log = _log_rows(cql, "caps.t")
    emulator.log_stats.reset()
    emulator.log_read_delay = 0.05  # each log page takes 50 ms: concurrent reads overlap
    cdcd = make_cdcd(
        [TableSpec("caps.t", "caps.t")],
        ConfigOptions(
            extra={
                "source": f"max_concurrent_reads = {max_reads}\nmax_read_rate = {rate}\nfetch_size = {fetch}"
            }
        ),
    )
    cdcd.start("--start-at", "earliest")
    schema = source_schema(cql, "caps.t")
    await wait_converged(cql, schema, pg_dsn, "caps.t", timeout=120)
    stats = emulator.log_stats
    with stats.lock:
        served = list(stats.served)
        peak = stats.max_in_flight
    assert cdcd.stop() == 0, cdcd.log_tail()
    rows = sum(n for _, n in served)
    assert rows >= in_log  # the whole backlog was read
    assert peak == max_reads, f"log pages in flight at most {peak}, cap {max_reads}"
    # Rows over time: a token bucket of `rate` rows/s holding at most one second's worth, in debt
    # by at most one page per slot.
    first, last = served[0][0], served[-1][0]
    allowed = rate * (last - first) + rate + max_reads * fetch
    assert rows <= allowed, f"{rows} rows in {last - first:.1f} s exceeds the {rate} rows/s cap"
    assert (last - first) >= (rows - rate - max_reads * fetch) / rate * 0.95
    print(
        f"\n{rows} rows in {last - first:.1f} s ({rows / (last - first):.0f}/s, cap {rate}); peak in flight {peak}"
    )

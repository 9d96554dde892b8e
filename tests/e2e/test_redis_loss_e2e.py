"""Redis losing its state while one ``cdcd run`` replicates (issue 11 §2, R-42): ``FLUSHALL``
mid-run, a Redis restart without persistence, and ``kill -9`` of cdcd while Redis is far behind
the destinations. Each time cdcd takes the positions (and the start floor) the destinations
recorded with their data (``cdcd.flow.applied``), never "now": afterwards PostgreSQL and ClickHouse
equal the source and the delete history holds each delete of the CDC log exactly once.

These tests run their own ``redis-server`` (no persistence) instead of the session's, because they
flush and restart it."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import msgspec
import pytest

from cdcd.events import Position, timeuuid_sort_key
from tests.e2e.compare import (
    assert_history_once,
    log_delete_positions,
    pg_connect,
    source_schema,
    wait_converged,
)
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.conftest import MakeCdcd, RedisServer
from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec, wait_for
from tests.e2e.workload import Workload


@pytest.fixture
def redis_url(private_redis: RedisServer) -> str:
    """The URL ``make_cdcd`` writes into the config: this test's own Redis."""
    return private_redis.url


CH_DEST = """
[destinations.ch]
type = "clickhouse"
url = "{url}"
"""


def _ch_history(client: Any, target: str) -> set[tuple[bytes, Any, int]]:
    db, _, table = target.partition(".")
    res = client.query(
        f"SELECT hex(_cdc_stream_id), _cdc_time, _cdc_batch_seq FROM `{db}`.`{table}_history` FINAL"
    )
    return {(bytes.fromhex(r[0]), r[1], r[2]) for r in res.result_rows}


def _replicating(cdcd: CdcdProcess) -> bool:
    """Every wanted group is leased by this replica and every branch of it is running."""
    try:
        st = cdcd.status()
    except OSError:
        return False
    wanted = st["share"]["wanted_groups"]
    states = [
        g["state"]
        for t in st["tables"].values()
        for d in t["destinations"].values()
        for g in d["groups"].values()
    ]
    return wanted > 0 and len(st["leases"]) == wanted and bool(states) and set(states) == {"running"}


def _restored(cdcd: CdcdProcess) -> tuple[int, int]:
    """Log lines saying positions / the start floor came from a destination."""
    messages = cdcd.log_text().splitlines()
    positions = sum("positions taken from the destination" in m for m in messages)
    floors = sum("restored from the destination's offsets table" in m for m in messages)
    return positions, floors


@pytest.mark.slow  # ~1.5 min
async def test_flushall_mid_run_positions_come_from_the_destinations(  # noqa: PLR0917
    cql: Any,
    make_cdcd: MakeCdcd,
    private_redis: RedisServer,
    pg_dsn: str,
    clickhouse_url: str,
    ch_database: str,
) -> None:
    workload = Workload(cql, "rl.t", seed=1111, partitions=40, rows_per_partition=30)
    workload.create()
    target = f"{ch_database}.t"  # PostgreSQL schema and ClickHouse database
    cdcd = make_cdcd(
        [TableSpec("rl.t", target, delete="tombstone", destinations=("pg", "ch"))],
        ConfigOptions(
            batch_max_rows=300, checkpoint_every=500, checkpoint_interval="300ms",
            # the shortest lease TTL: after Redis lost its state no lease is taken for one TTL
            extra={"destinations": CH_DEST.format(url=clickhouse_url), "state": 'lease_ttl = "3s"'},
        ),
    )  # fmt: skip
    cdcd.start()
    cdcd.wait_ready()
    await asyncio.to_thread(wait_for, lambda: _replicating(cdcd), 30, "every group leased")
    writer = asyncio.create_task(asyncio.to_thread(workload.run, 24_000, chunk=400))
    rng = random.Random(31)
    flushes = restarts = 0
    # FLUSHALL while cdcd runs: its branches keep their positions in memory and save again.
    for _ in range(3):
        await asyncio.wait({writer}, timeout=rng.uniform(1.5, 3.0))
        private_redis.client().flushall()
        flushes += 1
    # FLUSHALL while cdcd is down and the workload goes on: the restart finds no checkpoint and
    # no start floor in Redis; "now" would skip what was written meanwhile.
    for _ in range(2):
        # the groups replicate again (leased after the Redis state loss, positions recorded)
        await asyncio.to_thread(wait_for, lambda: _replicating(cdcd), 30, "every group leased again")
        await asyncio.wait({writer}, timeout=rng.uniform(1.0, 2.5))
        cdcd.kill9()
        await asyncio.sleep(rng.uniform(1.0, 2.0))
        private_redis.client().flushall()
        flushes += 1
        assert not private_redis.keys("*")
        cdcd.start()
        restarts += 1
        await asyncio.to_thread(cdcd.wait_ready, 90)
    result = await writer
    assert result.changes + result.tolerated_errors == 24_000

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    schema = source_schema(cql, "rl.t")
    pg = await wait_converged(cql, schema, pg_dsn, target, timeout=150, alive=alive)
    u = urlsplit(clickhouse_url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
    try:
        ch = await wait_ch_converged(cql, schema, client, target, timeout=150, alive=alive)
        deletes = log_delete_positions(cql, "rl.t")
        assert _ch_history(client, target) == deletes
    finally:
        client.close()
    assert len(pg.rows) == len(ch.rows) > 100
    assert await assert_history_once(cql, "rl.t", pg_dsn, target) > 300
    positions, floors = _restored(cdcd)
    assert floors >= 2 * restarts, "the start floor was not restored from the destinations"  # pg and ch
    assert positions >= 2 * restarts, "positions were not taken from the destinations"
    # Redis holds checkpoints again, and the destinations' offsets name every stream they applied.
    assert private_redis.keys("cdcdtest:*:ckpt:*")
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not [m for m in cdcd.log_messages() if "dead-letter" in m.get("message", "")]
    print(
        f"flushes={flushes} restarts={restarts} rows={len(pg.rows)} restored: positions={positions} floors={floors}"
    )


def _redis_positions(server: RedisServer) -> dict[bytes, Position]:
    decoder = msgspec.msgpack.Decoder(Position)
    out: dict[bytes, Position] = {}
    client = server.client()
    for key in server.keys("*:ckpt:pg:*"):
        for stream, blob in client.hgetall(key).items():
            out[bytes(stream)] = decoder.decode(blob)
    return out


async def _pg_positions(pg_dsn: str, schema_name: str) -> dict[bytes, Any]:
    conn = await pg_connect(pg_dsn)
    try:
        rows = await conn.fetch(
            f'SELECT stream_id, position FROM "{schema_name}".cdcd_offsets '
            "WHERE destination = $1 AND generation > 0",  # (generation 0: the start floor's row)
            "pg",
        )
    finally:
        await conn.close()
    return {bytes(r["stream_id"]): r["position"] for r in rows}


@pytest.mark.slow  # ~1.5 min
async def test_redis_restart_without_persistence_and_kill9_ahead_of_redis_stay_exact(
    cql: Any, make_cdcd: MakeCdcd, private_redis: RedisServer, pg_dsn: str
) -> None:
    """Redis checkpoints lag far behind the data (saved every 20 s): each ``kill -9`` lands
    between the destination's commit and the Redis checkpoint, so the restart resumes from the
    destination, ahead of Redis. Redis is also restarted empty once while cdcd runs."""
    workload = Workload(cql, "rl.t", seed=2222, partitions=40, rows_per_partition=30)
    workload.create()
    target = "dst.t"
    cdcd = make_cdcd(
        [TableSpec("rl.t", target, delete="tombstone")],
        ConfigOptions(
            batch_max_rows=300, checkpoint_every=1_000_000, checkpoint_interval="20s",
            extra={"state": 'lease_ttl = "3s"'},  # the wait after Redis lost its state is one TTL
        ),
    )  # fmt: skip
    cdcd.start()
    cdcd.wait_ready()
    await asyncio.to_thread(wait_for, lambda: _replicating(cdcd), 30, "every group leased")
    writer = asyncio.create_task(asyncio.to_thread(workload.run, 24_000, chunk=400))
    rng = random.Random(77)
    ahead = 0
    await asyncio.wait({writer}, timeout=3.0)
    # Redis restarts empty while cdcd replicates: cdcd waits for it, then saves again.
    private_redis.stop()
    await asyncio.sleep(1.5)
    private_redis.start()
    for _ in range(3):
        await asyncio.to_thread(wait_for, lambda: _replicating(cdcd), 30, "every group leased again")
        await asyncio.wait({writer}, timeout=rng.uniform(2.0, 4.0))
        cdcd.kill9()
        held = await _pg_positions(pg_dsn, "dst")
        saved = _redis_positions(private_redis)
        ahead += sum(
            1
            for s, t in held.items()
            if s not in saved or timeuuid_sort_key(saved[s].time) < timeuuid_sort_key(t)
        )
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        cdcd.start()
        await asyncio.to_thread(cdcd.wait_ready, 90)
    result = await writer
    assert result.changes + result.tolerated_errors == 24_000
    assert ahead > 0, "no kill landed while the destination was ahead of Redis"

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    snap = await wait_converged(cql, source_schema(cql, "rl.t"), pg_dsn, target, timeout=150, alive=alive)
    assert len(snap.rows) > 100
    assert await assert_history_once(cql, "rl.t", pg_dsn, target) > 300
    positions, _ = _restored(cdcd)
    assert positions >= 1
    assert cdcd.stop() == 0, cdcd.log_tail()
    print(
        f"destination ahead of Redis at the kills (streams summed): {ahead}; restored positions logs: {positions}"
    )

"""The staleness filter end to end (R-22): a real ``cdcd run`` with ``[staleness] max_age = "2s"``
reading a log entry written 3.5 s earlier (``--start-at earliest``):

* the too-old event is not applied; the staleness audit (Redis, the dead-letter store's ``stale``
  queue) holds it with the destination, its key, its write time and the time it was read, and
  ``cdcd_events_skipped_total{reason="too_old"}`` counts it; a fresh event is applied;
* ``cdcd run --backfill`` applies the same kind of event, and the audit records that the check
  was off;
* the audit is bounded: entries older than ``audit_retention`` are trimmed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.request
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from cdcd.events import ChangeEvent, Op, Position
from cdcd.stages.staleness import trim_audit
from cdcd.state import DeadLetterStore
from tests.e2e.compare import pg_connect
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec, wait_for

STALENESS = '\n[staleness]\nmax_age = "2s"\naudit_retention = "1h"\n'


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


async def pg_ids(dsn: str, table: str) -> set[int]:
    conn = await pg_connect(dsn)
    try:
        return {r[0] for r in await conn.fetch(f"SELECT id FROM {table}")}
    except Exception:  # not created yet
        return set()
    finally:
        await conn.close()


async def test_too_old_events_are_audited_and_backfill_applies_them(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    cql.execute(
        "CREATE KEYSPACE old WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    for t in ("a", "b"):
        cql.execute(f"CREATE TABLE old.{t} (id int PRIMARY KEY, v text) WITH cdc = {{'enabled': true}}")
        cql.execute(f"INSERT INTO old.{t} (id, v) VALUES (1, 'written long ago')")
    written = time.time()
    await asyncio.sleep(3.5)

    cdcd = make_cdcd([TableSpec("old.a", "old.a")], ConfigOptions(extra={"destinations": STALENESS}))
    cdcd.start("--start-at", "earliest")
    cdcd.wait_ready()
    cql.execute("INSERT INTO old.a (id, v) VALUES (2, 'fresh')")

    async def fresh_applied() -> bool:
        return 2 in await pg_ids(pg_dsn, "old.a")

    for _ in range(200):
        if await fresh_applied():
            break
        await asyncio.sleep(0.2)
    assert await pg_ids(pg_dsn, "old.a") == {2}, cdcd.log_tail()

    client = aioredis.Redis.from_url(redis_url)
    try:
        audit = await DeadLetterStore(client, prefix=redis_prefix).list("stale", "pg")
    finally:
        await client.aclose()
    assert len(audit) == 1, audit
    entry = audit[0]
    assert (entry.kind, entry.destination, entry.table, entry.stage) == ("stale", "pg", "old.a", "staleness")
    assert entry.event.key == {"id": 1}
    event_time = dt.datetime.fromtimestamp(entry.event.write_time_us / 1e6, dt.UTC)
    assert abs(event_time.timestamp() - written) < 2
    assert entry.reason.startswith("too_old: event written at ")
    assert event_time.isoformat(timespec="milliseconds").replace("+00:00", "Z") in entry.reason
    assert "read at " in entry.reason and "staleness.max_age 2s" in entry.reason
    metrics = await asyncio.to_thread(get_text, f"http://127.0.0.1:{cdcd.http_port}/metrics")
    assert (
        'cdcd_events_skipped_total{destination="pg",reason="too_old",replica="e2e",table="old.a"} 1.0'
        in metrics
    )
    assert cdcd.stop() == 0, cdcd.log_tail()

    # --backfill: the same kind of event is applied, and the audit says the check was off
    backfill = make_cdcd([TableSpec("old.b", "old.b")], ConfigOptions(extra={"destinations": STALENESS}))
    backfill.start("--start-at", "earliest", "--backfill")
    backfill.wait_ready()

    def applied() -> bool:
        return asyncio.run(pg_ids(pg_dsn, "old.b")) == {1}

    await asyncio.to_thread(wait_for, applied, 60, "the too-old event applied by --backfill")
    r = redis.Redis.from_url(redis_url)
    try:
        off = r.hget(f"{redis_prefix}:dlq:stale:pg:off", "old.b")
        assert r.hlen(f"{redis_prefix}:dlq:stale:pg:e") == 1  # nothing added for old.b
    finally:
        r.close()
    assert off is not None and json.loads(off)["by"] == "cdcd run --backfill"
    assert any("max_age check is off" in m.get("message", "") for m in backfill.log_messages())
    assert backfill.stop() == 0, backfill.log_tail()


async def test_the_audit_is_trimmed_to_its_retention(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = DeadLetterStore(client, prefix=redis_prefix)
    now = time.time()
    try:
        entries = []
        for i, age in enumerate((7200.0, 60.0)):
            e = ChangeEvent(
                table="ks.t", pos=Position(generation=1, stream_id=b"\x01" * 16, time=uuid.uuid1()),
                batch_seq=i, op=Op.INSERT, write_time_us=1, key={"id": i},
            )  # fmt: skip
            entries.append(DeadLetterStore.make("stale", "pg", e, reason="too_old", stage="staleness",
                                                attempts=0, first_failed_at=now - age))  # fmt: skip
        await store.add(entries)
        assert await trim_audit(store, "pg", before=now - 3600) == 1
        left = await store.list("stale", "pg")
        assert [e.event.key for e in left] == [{"id": 1}]
    finally:
        await client.aclose()

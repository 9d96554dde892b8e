"""A masking rule added to the config file takes effect on SIGHUP, without a restart: changes read
after the reload are masked, those applied before keep what they were (never retroactive)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
from typing import Any

from tests.e2e.compare import pg_connect
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec, wait_for

HASH_KEY = "0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff0"


def hashed(value: str) -> str:
    return "hash_" + hmac.new(bytes.fromhex(HASH_KEY), value.encode(), hashlib.sha256).hexdigest()


async def test_sighup_adds_a_masking_rule(cql: Any, make_cdcd: MakeCdcd, pg_dsn: str) -> None:
    cql.execute(
        "CREATE KEYSPACE rm WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    cql.execute(
        "CREATE TABLE rm.users (id int PRIMARY KEY, email text, name text) WITH cdc = {'enabled': true}"
    )
    options = ConfigOptions(extra={"destinations": '\n[masking]\nhash_key = "${CDCD_HASH_KEY}"\n'})
    cdcd = make_cdcd([TableSpec("rm.users", "dst.users")], options, env={"CDCD_HASH_KEY": HASH_KEY})
    cdcd.start()
    cdcd.wait_ready()
    insert = cql.prepare("INSERT INTO rm.users (id, email, name) VALUES (?, ?, ?)")
    for i in range(5):
        cql.execute(insert, (i, f"before{i}@example.com", f"n{i}"))

    async def rows() -> dict[int, tuple[str, str]]:
        conn = await pg_connect(pg_dsn)
        try:
            return {
                r["id"]: (r["email"], r["name"])
                for r in await conn.fetch("SELECT id, email, name FROM dst.users")
            }
        except Exception:
            return {}
        finally:
            await conn.close()

    def has(n: int) -> bool:
        return len(asyncio.run(rows())) >= n

    await asyncio.to_thread(wait_for, lambda: has(5), 60, "the first rows applied")
    cdcd.config.write_text(
        cdcd.config.read_text()
        + '\n[[masking.rules]]\npattern = "^email$"\nstrategy = "hash"\nclass = "pii"\n'
    )
    assert cdcd.proc is not None
    cdcd.proc.send_signal(signal.SIGHUP)
    await asyncio.to_thread(
        wait_for,
        lambda: any(m.get("message") == "configuration reloaded" for m in cdcd.log_messages()),
        60, "the reload applied",
    )  # fmt: skip
    for i in range(5, 10):
        cql.execute(insert, (i, f"after{i}@example.com", f"n{i}"))
    await asyncio.to_thread(wait_for, lambda: has(10), 60, "the later rows applied")
    got = await rows()
    for i in range(5):
        assert got[i] == (f"before{i}@example.com", f"n{i}")  # not retroactive
    for i in range(5, 10):
        assert got[i] == (hashed(f"after{i}@example.com"), f"n{i}")
    assert "after5@example.com" not in cdcd.log_text()
    assert cdcd.stop() == 0, cdcd.log_tail()

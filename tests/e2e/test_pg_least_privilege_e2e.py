"""``cdcd run`` into PostgreSQL as a role holding exactly the grants of docs/permissions.md, and
``cdcd check-config`` naming the statements to run when one is missing.

The database belongs to ``postgres``; PUBLIC's default rights on it are revoked, so the role has
only what the test grants. The statements check-config prints are run as they are, then the role
replicates a random workload (tombstone deletes, so the ``_history`` table is written too) and
PostgreSQL equals the source.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.conftest import _psql
from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ROOT, CdcdProcess, TableSpec
from tests.e2e.workload import Workload

ROLE = "cdcd_writer"
TABLE = "lpg.items"


def as_role(dsn: str, role: str) -> str:
    u = urlsplit(dsn)
    return urlunsplit(u._replace(netloc=f"{role}@{u.hostname}:{u.port}"))


async def check_config(cdcd: CdcdProcess) -> tuple[int, str]:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cdcd", "check-config", "--config", str(cdcd.config)],
        cwd=ROOT, env=cdcd.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def grants_in(output: str) -> list[str]:
    m = re.search(r"privileges missing; run as an owner or superuser: (.*;) \(\d", output)
    assert m, output
    return [s.strip() for s in m.group(1).split(";") if s.strip()]


async def test_documented_pg_grants_are_enough_and_missing_ones_are_named(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str
) -> None:
    db = urlsplit(pg_dsn).path.lstrip("/")
    _psql(pg_dsn, f"CREATE ROLE {ROLE} LOGIN")
    try:
        _psql(
            pg_dsn, f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC; GRANT CONNECT ON DATABASE "{db}" TO {ROLE}'
        )
        _psql(pg_dsn, "CREATE SCHEMA dst")  # someone else's schema: cdcd needs USAGE and CREATE on it
        work = Workload(cql, TABLE, seed=5, partitions=8, rows_per_partition=10)
        work.create()
        cdcd = make_cdcd(
            [TableSpec(TABLE, "dst.items", delete="tombstone")], env={"E2E_PG_DSN": as_role(pg_dsn, ROLE)}
        )

        code, out = await check_config(cdcd)
        assert code != 0, out
        wanted = grants_in(out)
        assert wanted == [
            f'GRANT TEMPORARY, CREATE ON DATABASE "{db}" TO "{ROLE}"',
            f'GRANT USAGE, CREATE ON SCHEMA "dst" TO "{ROLE}"',
        ], out
        for statement in wanted:
            _psql(pg_dsn, statement)
        code, out = await check_config(cdcd)
        assert code == 0, out

        cdcd.start()
        cdcd.wait_ready()
        done = await asyncio.to_thread(work.run, 800)
        assert done.ops["row_delete"] > 0 and done.ops["update"] > 0

        def alive() -> None:
            assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

        snap = await wait_converged(
            cql, source_schema(cql, TABLE), pg_dsn, "dst.items", timeout=90, alive=alive
        )
        assert len(snap.rows) > 10
        assert cdcd.stop() == 0, cdcd.log_tail()
        assert not cdcd.errors(), cdcd.errors()
        _psql(pg_dsn, "SELECT 1 FROM dst.items_history LIMIT 1")
    finally:
        _psql(pg_dsn, f"DROP OWNED BY {ROLE} CASCADE")
        _psql(pg_dsn, f"DROP ROLE IF EXISTS {ROLE}")

"""``cdcd run`` as a role holding exactly the grants of docs/permissions.md.

The emulator runs with authentication and authorization on (a superuser creates the table and
writes the workload); cdcd logs in as ``cdcd`` with the password from ``${SCYLLA_PASSWORD}``.
With those grants every insert, update and delete reaches PostgreSQL, under both ways ScyllaDB has
checked a CDC log read (on the base table since 2025.3.2, on the log table before). Without one of
them cdcd must say which permission is missing instead of replicating nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster

from tests.e2e.compare import pg_connect, source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec, wait_for
from tests.e2e.workload import Workload
from tests.scylla_emulator import EmulatorServer

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin", "admin-secret")
PASSWORD = "cdcd-secret"
TABLE = "lp.items"
SOURCE = 'username = "cdcd"\npassword = "${SCYLLA_PASSWORD}"'


def documented_grants(table: str, password: str) -> list[str]:
    """The statements of the first ``cql`` block of docs/permissions.md, for ``table``."""
    text = (ROOT / "docs" / "permissions.md").read_text()
    block = re.search(r"```cql\n(.*?)```", text, re.S)
    assert block, "docs/permissions.md has no cql block"
    out = []
    for raw in block.group(1).splitlines():
        line = raw.strip()
        if line and not line.startswith("--"):
            line = line.replace("shop.orders", table).replace("'choose-a-password'", f"'{password}'")
            out.append(line.rstrip(";"))
    assert out[0].startswith("CREATE ROLE cdcd ") and all(s.startswith("GRANT SELECT ON ") for s in out[1:])
    return out


def documented_tablet_grants() -> list[str]:
    """The second ``cql`` block of docs/permissions.md (tablet keyspaces, once per cluster)."""
    text = (ROOT / "docs" / "permissions.md").read_text()
    blocks = re.findall(r"```cql\n(.*?)```", text, re.S)
    assert len(blocks) >= 2, "docs/permissions.md has no cql block for tablet keyspaces"
    out = [line.strip().rstrip(";") for line in blocks[1].splitlines() if line.strip()]
    assert out and all(s.startswith("GRANT SELECT ON system.") for s in out), out
    return out


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """The emulator with PasswordAuthenticator and permissions (``make_cdcd`` points cdcd at it)."""
    with EmulatorServer("127.0.0.1", 0, vnodes=8, shards=2, credentials=ADMIN) as server:
        yield server


@pytest.fixture
def admin(emulator: EmulatorServer) -> Iterator[Any]:
    cluster = Cluster(
        [emulator.host], port=emulator.port, protocol_version=4, auth_provider=PlainTextAuthProvider(*ADMIN)
    )
    session = cluster.connect()
    session.default_timeout = 30
    try:
        yield session
    finally:
        cluster.shutdown()


def _options() -> ConfigOptions:
    return ConfigOptions(extra={"source": SOURCE})


@pytest.mark.parametrize("log_check", ["base", "log"])
async def test_documented_grants_are_enough(
    emulator: EmulatorServer, admin: Any, make_cdcd: MakeCdcd, pg_dsn: str, log_check: str
) -> None:
    emulator.call(setattr, emulator.engine.auth, "cdc_log_permissions", log_check)
    work = Workload(admin, TABLE, seed=42, partitions=10, rows_per_partition=20)
    work.create()
    for stmt in documented_grants(TABLE, PASSWORD):
        admin.execute(stmt)
    cdcd = make_cdcd([TableSpec(TABLE, "dst.items")], _options(), env={"SCYLLA_PASSWORD": PASSWORD})
    cdcd.start()
    cdcd.wait_ready()

    done = await asyncio.to_thread(work.run, 1500)
    for op in ("insert", "update", "set_null", "row_delete", "range_delete", "partition_delete"):
        assert done.ops[op] > 0, op

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    snap = await wait_converged(
        admin, source_schema(admin, TABLE), pg_dsn, "dst.items", timeout=90, alive=alive
    )
    assert len(snap.rows) > 20
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()
    # The role really was restricted to the documented grants.
    auth = emulator.engine.auth
    assert not auth.roles["cdcd"].superuser
    assert {r for r, perms in auth.roles["cdcd"].permissions.items() if perms} == {
        ("system_distributed", "cdc_generation_timestamps"),
        ("system_distributed", "cdc_streams_descriptions_v2"),
        ("lp", "items"),
        ("lp", "items_scylla_cdc_log"),
    }


async def test_documented_grants_are_enough_in_a_tablet_keyspace(
    emulator: EmulatorServer, admin: Any, make_cdcd: MakeCdcd, pg_dsn: str
) -> None:
    """The same with the table in a tablet keyspace: the tablet grants of docs/permissions.md make
    system.cdc_timestamps / system.cdc_streams readable; a split mid-way is followed."""
    work = Workload(admin, TABLE, seed=43, partitions=10, rows_per_partition=20)
    work.create(tablets=True)
    for stmt in documented_grants(TABLE, PASSWORD) + documented_tablet_grants():
        admin.execute(stmt)
    cdcd = make_cdcd([TableSpec(TABLE, "dst.items")], _options(), env={"SCYLLA_PASSWORD": PASSWORD})
    cdcd.start()
    cdcd.wait_ready()
    await asyncio.to_thread(work.run, 600)
    admin.execute(f"ALTER TABLE {TABLE} WITH tablets = {{'min_tablet_count': 8}}")
    await asyncio.to_thread(work.run, 600)

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    await wait_converged(admin, source_schema(admin, TABLE), pg_dsn, "dst.items", timeout=90, alive=alive)
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not cdcd.errors(), cdcd.errors()
    auth = emulator.engine.auth
    assert {r for r, perms in auth.roles["cdcd"].permissions.items() if perms} >= {
        ("system", "cdc_timestamps"),
        ("system", "cdc_streams"),
    }


@pytest.mark.parametrize(
    ("missing", "resource"),
    [
        ("GRANT SELECT ON lp.items TO cdcd", "<table lp.items>"),  # log reads (checked on the base table)
        (
            "GRANT SELECT ON system_distributed.cdc_generation_timestamps TO cdcd",
            "<table system_distributed.cdc_generation_timestamps>",
        ),
        (
            "GRANT SELECT ON system_distributed.cdc_streams_descriptions_v2 TO cdcd",
            "<table system_distributed.cdc_streams_descriptions_v2>",
        ),
    ],
    ids=["base-table", "generations", "streams"],
)
async def test_one_grant_fewer_is_reported(  # noqa: PLR0917
    emulator: EmulatorServer, admin: Any, make_cdcd: MakeCdcd, pg_dsn: str, missing: str, resource: str
) -> None:
    """Today: without the generations grant cdcd stops at start-up (exit 1) with the error; without
    the log grant each stream group fails, is retried with a growing pause, and /status shows the
    error per group (docs/permissions.md). Either way the error names the missing permission, and
    nothing reaches PostgreSQL. A later grant is picked up by the retries."""
    work = Workload(admin, TABLE, seed=1, partitions=5, rows_per_partition=5)
    work.create()
    grants = documented_grants(TABLE, PASSWORD)
    assert missing in grants
    for stmt in grants:
        if stmt != missing:
            admin.execute(stmt)
    cdcd = make_cdcd([TableSpec(TABLE, "dst.items")], _options(), env={"SCYLLA_PASSWORD": PASSWORD})
    cdcd.start()
    expected = f"User cdcd has no SELECT permission on {resource} or any of its parents"

    def reported() -> bool:
        return any(expected in str(e.get("error", "")) for e in cdcd.errors())

    await asyncio.to_thread(wait_for, reported, 30, f"an error log record naming {expected!r}")
    # Changes made while it fails (after its start position was fixed: a fresh start begins at "now")
    await asyncio.to_thread(work.run, 50)

    def stopped_or_failed() -> bool:  # either cdcd stops, or /status shows every group failing on it
        if not cdcd.running():
            return True
        st = cdcd.status()["tables"].get(TABLE, {}).get("destinations", {}).get("pg")
        groups = st["groups"].values() if st else []
        return bool(groups) and all(expected in (g["last_error"] or "") for g in groups)

    await asyncio.to_thread(wait_for, stopped_or_failed, 30, "cdcd stopped or its groups failed")
    if cdcd.running():
        assert cdcd.status()["tables"][TABLE]["destinations"]["pg"]["events_applied"] == 0
        # Every group of the table fails: not ready, and the detail says which.
        code, body = await asyncio.to_thread(cdcd.get, "/readyz")
        assert code == 503 and f"failing: {TABLE} -> pg" in body["checks"]["daemon"]["detail"], body
    else:
        assert cdcd.exit_code() != 0
    conn = await pg_connect(pg_dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('dst.items') IS NOT NULL")
        assert not exists or await conn.fetchval("SELECT count(*) FROM dst.items") == 0
    finally:
        await conn.close()
    if not cdcd.running():
        return
    # The failed groups are retried: once the grant is there they replicate, without a restart.
    admin.execute(missing)
    await asyncio.to_thread(work.run, 50)

    def alive() -> None:
        assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

    await wait_converged(admin, source_schema(admin, TABLE), pg_dsn, "dst.items", timeout=90, alive=alive)

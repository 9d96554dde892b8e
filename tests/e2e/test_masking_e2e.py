"""PII/PHI masking end to end (R-21, R-60): a real ``cdcd run`` replicating a patients table and
a visits table into PostgreSQL, TimescaleDB and ClickHouse.

* Every destination holds exactly the documented masked values; the test computes each HMAC
  itself. The visits table's key column is hashed by a ``[[masking.rules]]`` pattern, so the
  two tables join on the hash in every destination.
* ``cdcd vault reveal`` returns the original behind a token.
* None of the plaintext values is found in any destination table, any Redis key or value, the
  daemon's whole log output, ``/status`` or ``/metrics``.
* A column added while running that matches a rule is masked from its first event (that event
  cannot be written to the unaltered destination: its dead-letter entry holds the hash).
* With the token vault unreachable the table stops (``masking-unavailable`` in ``/status`` and
  ``/readyz``, an error logged) and writes nothing; once it is back, the rows arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pytest
import redis

from tests.conftest import fresh_database
from tests.e2e.compare import pg_connect
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import (
    ROOT,
    CdcdProcess,
    ConfigOptions,
    TableSpec,
    ch_ts_destinations,
    free_port,
    wait_for,
)

HASH_KEY = "5f1e0c7a9b3d2e4f60718293a4b5c6d7e8f90112233445566778899aabbccdde"
VAULT_KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"

PATIENTS = [
    # id, email, ssn, mrn, card, notes (passthrough), street, city
    (1, "ann.pii@example.org", "123-45-6789", "MRN-000417", "4111111111111111", "enc:AAAA", "12 Elmstreetsecret", "Oslo"),
    (2, "bob.pii@example.org", "987-65-4321", "MRN-000923", "5500000000000004", "enc:BBBB", "7 Birchwaysecret", "Bergen"),
]  # fmt: skip
VISITS = [
    ("ann.pii@example.org", 1, "checkup"),
    ("ann.pii@example.org", 2, "x-ray"),
    ("bob.pii@example.org", 1, "flu"),
]
PHONE = "+47-555-0199-secret"
SECRETS = [p[i] for p in PATIENTS for i in (1, 2, 3, 4, 6)] + [PHONE]

SCHEMA = [
    "CREATE KEYSPACE clinic WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}",
    "CREATE TYPE clinic.addr (street text, city text)",
    """CREATE TABLE clinic.patients (id int PRIMARY KEY, email text, ssn text, mrn text, card text,
       notes text, name text, address addr) WITH cdc = {'enabled': true}""",
    """CREATE TABLE clinic.visits (patient_email text, visit_id int, reason text,
       PRIMARY KEY (patient_email, visit_id)) WITH cdc = {'enabled': true}""",
]
PATIENT_MASKING = """
[tables.masking]
email = "hash"
ssn = { strategy = "redact", class = "pii" }
mrn = { strategy = "tokenize", class = "phi" }
card = { strategy = "keep_last", keep = 4 }
notes = "passthrough"
"address.street" = "hash"
"""
MASKING = """
[masking]
hash_key = "${CDCD_HASH_KEY}"
vault_key = "${CDCD_VAULT_KEY}"
vault_dsn = "${CDCD_VAULT_DSN}"

[[masking.rules]]
pattern = "(?i)(^|_)(e_?mail|phone)$"
strategy = "hash"
class = "pii"
"""


def h(text: str) -> str:
    return "hash_" + hmac.new(bytes.fromhex(HASH_KEY), text.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def vault_dsn(pg_server_dsn: str) -> Iterator[str]:
    with fresh_database(pg_server_dsn, "vault") as dsn:
        yield dsn


def masking_env(vault_dsn: str, **extra: str) -> dict[str, str]:
    return {"CDCD_HASH_KEY": HASH_KEY, "CDCD_VAULT_KEY": VAULT_KEY, "CDCD_VAULT_DSN": vault_dsn, **extra}


def write_patients(cql: Any, rows: list[tuple[Any, ...]]) -> None:
    for pid, email, ssn, mrn, card, notes, street, city in rows:
        cql.execute(
            "INSERT INTO clinic.patients (id, email, ssn, mrn, card, notes, name, address) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, {street: %s, city: %s})",
            (pid, email, ssn, mrn, card, notes, f"Patient {pid}", street, city),
        )


def http_text(cdcd: CdcdProcess, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{cdcd.http_port}{path}", timeout=5) as r:
        return str(r.read().decode())


def redis_dump(url: str, prefix: str) -> str:
    r = redis.Redis.from_url(url)
    out: list[bytes] = []
    try:
        for key in r.scan_iter(match=f"{prefix}*"):
            out.append(key)
            kind = r.type(key).decode()
            if kind == "string":
                out.append(r.get(key) or b"")
            elif kind == "hash":
                for k, v in r.hgetall(key).items():
                    out += [k, v]
            elif kind == "zset":
                out += [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
            elif kind == "set":
                out += list(r.smembers(key))
            elif kind == "list":
                out += r.lrange(key, 0, -1)
    finally:
        r.close()
    assert out, "nothing in Redis"
    return b"\n".join(out).decode("utf-8", errors="replace")


async def pg_dump(dsn: str, schema: str) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    conn = await pg_connect(dsn)
    try:
        tables = [r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)]  # fmt: skip
        rows = {
            t: [
                json.loads(r[0])
                for r in await conn.fetch(f'SELECT row_to_json(x)::text FROM "{schema}"."{t}" x')
            ]
            for t in tables
        }
    finally:
        await conn.close()
    return json.dumps(rows), rows


def ch_client(url: str) -> Any:
    u = urlsplit(url)
    return clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)


def ch_dump(url: str, db: str) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    client = ch_client(url)
    try:
        tables = [
            r[0] for r in client.query(f"SELECT name FROM system.tables WHERE database = '{db}'").result_rows
        ]
        rows = {}
        for t in tables:
            q = client.query(f"SELECT * FROM `{db}`.`{t}` FINAL")
            rows[t] = [dict(zip(q.column_names, r, strict=True)) for r in q.result_rows]
    finally:
        client.close()
    return json.dumps(rows, default=str), rows


async def wait_rows(check: Any, seconds: float, what: str, cdcd: CdcdProcess) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    last: Any = None
    while loop.time() < deadline:
        assert cdcd.running(), cdcd.log_tail()
        try:
            if await check():
                return
        except Exception as exc:  # the table may not exist yet
            last = exc
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} not reached in {seconds}s ({last!r})\n{cdcd.log_tail()}")


@pytest.mark.slow  # ~30 s
async def test_masked_everywhere_joins_reveal_and_new_columns(  # noqa: PLR0917
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, ts_dsn: str, vault_dsn: str, clickhouse_url: str,
    ch_database: str, redis_url: str, redis_prefix: str,
) -> None:  # fmt: skip
    for stmt in SCHEMA:
        cql.execute(stmt)
    cql.execute("CREATE TABLE clinic.contacts (id int PRIMARY KEY, label text) WITH cdc = {'enabled': true}")
    db = ch_database
    destinations = ch_ts_destinations(clickhouse_url) + MASKING
    all3 = ("pg", "ch", "ts")
    cdcd = make_cdcd(
        [
            TableSpec("clinic.patients", f"{db}.patients", destinations=all3, extra=PATIENT_MASKING),
            TableSpec("clinic.visits", f"{db}.visits", destinations=all3),
            TableSpec("clinic.contacts", f"{db}.contacts", destinations=("pg",)),
        ],
        ConfigOptions(extra={"destinations": destinations}, retry_max_attempts=2),
        env=masking_env(vault_dsn, TS_DSN=ts_dsn),
    )
    cdcd.start()
    cdcd.wait_ready()
    write_patients(cql, PATIENTS)
    for email, vid, reason in VISITS:
        cql.execute("INSERT INTO clinic.visits (patient_email, visit_id, reason) VALUES (%s, %s, %s)",
                    (email, vid, reason))  # fmt: skip
    cql.execute(
        "DELETE FROM clinic.visits WHERE patient_email = %s AND visit_id = 2", ("ann.pii@example.org",)
    )
    cql.execute("UPDATE clinic.patients SET address.street = %s WHERE id = 2", ("8 Birchwaysecret",))
    SECRETS.append("8 Birchwaysecret")

    async def pg_done(dsn: str) -> bool:
        _, rows = await pg_dump(dsn, db)
        streets = {r["address"]["street"] for r in rows.get("patients", [])}
        return len(rows.get("visits", [])) == 2 and h("8 Birchwaysecret") in streets

    async def ch_done() -> bool:
        _, rows = ch_dump(clickhouse_url, db)
        live = [r for r in rows.get("visits", []) if not r.get("_cdc_deleted")]
        return len(live) == 2 and any(
            ch_street(r["address"]) == h("8 Birchwaysecret") for r in rows.get("patients", [])
        )

    await wait_rows(lambda: pg_done(pg_dsn), 60, "PostgreSQL rows", cdcd)
    await wait_rows(lambda: pg_done(ts_dsn), 60, "TimescaleDB rows", cdcd)
    await wait_rows(ch_done, 60, "ClickHouse rows", cdcd)

    # -- exactly the documented masked values, in every destination
    tokens: dict[int, str] = {}
    for dsn in (pg_dsn, ts_dsn):
        _, rows = await pg_dump(dsn, db)
        got = {r["id"]: r for r in rows["patients"]}
        for pid, email, _ssn, _mrn, card, notes, street, city in PATIENTS:
            r = got[pid]
            assert r["email"] == h(email)
            assert r["ssn"] == "[REDACTED]"
            assert re.fullmatch(r"tok_[0-9a-f]{32}", r["mrn"]), r["mrn"]
            assert tokens.setdefault(pid, r["mrn"]) == r["mrn"]  # the same token in every destination
            assert r["card"] == "*" * 12 + card[-4:]
            assert r["notes"] == notes and r["name"] == f"Patient {pid}"
            assert r["address"] == {"street": h("8 Birchwaysecret" if pid == 2 else street), "city": city}
        # hash join across tables: visits' key column is hashed by the rule
        conn = await pg_connect(dsn)
        try:
            joined = await conn.fetch(
                f'SELECT p.id, v.visit_id, v.reason FROM "{db}".patients p JOIN "{db}".visits v '
                "ON v.patient_email = p.email ORDER BY 1, 2"
            )
        finally:
            await conn.close()
        assert [tuple(r) for r in joined] == [(1, 1, "checkup"), (2, 1, "flu")]
    _, ch_rows = ch_dump(clickhouse_url, db)
    ch_p = {r["id"]: r for r in ch_rows["patients"]}
    for pid, email, _ssn, _mrn, card, notes, _street, _city in PATIENTS:
        r = ch_p[pid]
        assert (r["email"], r["ssn"], r["mrn"], r["card"], r["notes"]) == (
            h(email), "[REDACTED]", tokens[pid], "*" * 12 + card[-4:], notes)  # fmt: skip
    client = ch_client(clickhouse_url)
    try:
        joined_ch = client.query(
            f"SELECT p.id, v.visit_id FROM `{db}`.patients AS p FINAL INNER JOIN "
            f"(SELECT * FROM `{db}`.visits FINAL WHERE NOT _cdc_deleted) AS v ON v.patient_email = p.email "
            "ORDER BY p.id, v.visit_id"
        ).result_rows
    finally:
        client.close()
    assert [tuple(r) for r in joined_ch] == [(1, 1), (2, 1)]

    # -- cdcd vault reveal: the original behind the token (and nothing with a wrong vault key)
    def reveal(token: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cdcd", "vault", "reveal", token, "--config", str(cdcd.config)],
            cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    for pid, _e, _s, mrn, *_ in PATIENTS:
        out = await asyncio.to_thread(reveal, tokens[pid], cdcd.env)
        assert out.returncode == 0 and out.stdout.strip() == mrn, out
    out = await asyncio.to_thread(reveal, tokens[1], {**cdcd.env, "CDCD_VAULT_KEY": "11" * 32})
    assert out.returncode == 1 and "MRN" not in out.stdout + out.stderr, out

    # -- a column added while running that matches a rule: masked from its first event
    cql.execute("ALTER TABLE clinic.contacts ADD phone text")
    cql.execute("INSERT INTO clinic.contacts (id, label, phone) VALUES (1, 'home', %s)", (PHONE,))

    # (schema_changes = "propagate": the column is added to the destinations, issue 12)
    deadline = time.monotonic() + 60
    while h(PHONE) not in (await pg_dump(pg_dsn, db))[0]:
        assert time.monotonic() < deadline, "the hashed phone never reached PostgreSQL\n" + cdcd.log_tail()
        await asyncio.sleep(0.5)
    assert h(PHONE) not in redis_dump(redis_url, redis_prefix)  # nothing dead-lettered for it

    # -- no plaintext anywhere
    status = http_text(cdcd, "/status")
    metrics = http_text(cdcd, "/metrics")
    assert (
        'cdcd_masked_values_total{class="phi",replica="e2e",strategy="tokenize",table="clinic.patients"}'
        in metrics
    )
    assert cdcd.stop() == 0, cdcd.log_tail()
    places = {
        "postgres": (await pg_dump(pg_dsn, db))[0],
        "timescaledb": (await pg_dump(ts_dsn, db))[0],
        "clickhouse": ch_dump(clickhouse_url, db)[0],
        "redis": redis_dump(redis_url, redis_prefix),
        "log": cdcd.log_text(),
        "/status": status,
        "/metrics": metrics,
    }
    for where, text in places.items():
        found = [s for s in SECRETS if s in text]
        assert not found, f"plaintext {found} found in {where}"
    assert "enc:AAAA" in places["postgres"]  # (the scan does see values: passthrough is copied as is)


class Proxy:
    """A TCP forwarder to PostgreSQL the test opens and closes: the token vault goes down and up."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.conns: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in self.conns:
            w.close()
        self.conns.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.conns += [writer, up_w]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))


@pytest.fixture
async def vault_proxy(vault_dsn: str) -> AsyncIterator[tuple[Proxy, str]]:
    u = urlsplit(vault_dsn)
    proxy = Proxy((u.hostname or "127.0.0.1", u.port or 5432))
    dsn = vault_dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{proxy.port}")
    assert dsn != vault_dsn
    try:
        yield proxy, dsn
    finally:
        await proxy.stop()


async def test_vault_down_stops_the_table_and_writes_nothing(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, vault_proxy: tuple[Proxy, str]
) -> None:
    proxy, dsn = vault_proxy
    for stmt in SCHEMA[:3]:
        cql.execute(stmt)
    cdcd = make_cdcd(
        [TableSpec("clinic.patients", "clinic.patients", extra=PATIENT_MASKING)],
        ConfigOptions(extra={"destinations": MASKING}),
        env=masking_env(dsn),
    )
    cdcd.start()
    cdcd.wait_ready()  # the vault is only needed once a token must be stored
    write_patients(cql, PATIENTS[:1])

    def stopped() -> bool:
        code, body = cdcd.get("/readyz")
        check = (body or {}).get("checks", {}).get("masking:clinic.patients", {})
        return code == 503 and not check.get("ok") and "masking-unavailable" in check.get("detail", "")

    await asyncio.to_thread(wait_for, stopped, 30, "/readyz naming masking:clinic.patients")
    states = {d["state"] for d in _branches(cdcd.status(), "clinic.patients")}
    assert states == {"masking-unavailable"}, cdcd.status()
    assert any("masking unavailable" in e.get("message", "") for e in cdcd.errors()), cdcd.log_tail()
    await asyncio.sleep(2.0)  # several retries of the batch: still nothing written
    conn = await pg_connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM clinic.patients") == 0
    finally:
        await conn.close()

    await proxy.start()  # the vault is back: the batch is read again and applied

    async def arrived() -> bool:
        conn = await pg_connect(pg_dsn)
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM clinic.patients") == 1)
        finally:
            await conn.close()

    await wait_rows(arrived, 60, "the row once the vault is back", cdcd)
    await asyncio.to_thread(wait_for, lambda: cdcd.get("/readyz")[0] == 200, 30, "/readyz 200 again")
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert not [s for s in SECRETS if s in cdcd.log_text()]


def ch_street(address: Any) -> Any:
    """The street of a ClickHouse UDT value (a named tuple: a dict or a plain tuple)."""
    return address["street"] if isinstance(address, dict) else address[0]


def _branches(status: Any, table: str) -> list[dict[str, Any]]:
    out = []
    for dest in status["tables"][table]["destinations"].values():
        out += list(dest.get("groups", {}).values())
    return out

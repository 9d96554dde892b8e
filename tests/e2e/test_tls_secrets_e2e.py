"""``cdcd run`` over TLS to every dependency, with a password in every DSN and URL, and a scan that
finds none of those secrets anywhere cdcd shows or stores things.

The servers speak TLS only and require client certificates (tests/tls_servers.py): the Scylla
emulator (with PasswordAuthenticator), PostgreSQL (``hostssl ... scram-sha-256
clientcert=verify-ca``), Redis (``tls-port``, ``requirepass``) and the ClickHouse endpoint
(HTTPS). cdcd verifies each server's certificate and host name against the test CA. The secrets
come from the environment (the PostgreSQL DSN, the Redis URL, the admin token) and from ``*_file``
(the Scylla and ClickHouse passwords).

A random workload of inserts, updates and deletes reaches PostgreSQL and ClickHouse exactly. Then
none of the secrets appears in cdcd's log (at debug level), ``/status`` (also verbose),
``/readyz``, ``/metrics``, the admin API's answers, the errors of failed connections
(``cdcd check-config`` with wrong passwords), or any key or value cdcd wrote to Redis.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
import redis
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster

from tests.conftest import _psql, free_port
from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.harness import ROOT, CdcdProcess
from tests.e2e.workload import Workload
from tests.scylla_emulator.server import EmulatorServer, tls_context
from tests.tls import TestPki
from tests.tls_servers import clickhouse_tls, pg_tls, redis_tls

SECRETS = {
    "scylla": "Scy-11a7-secret",
    "redis": "Red-2b4c-secret",
    "pg": "Pgs-93de-secret",
    "ch": "Chp-5f10-secret",
    "admin": "Adm-7c2e-token",
}
TABLE = "sec.items"


@pytest.fixture(scope="module")
def pki() -> Iterator[TestPki]:
    with tempfile.TemporaryDirectory(prefix="cdcd-pki-") as d:
        yield TestPki(Path(d) / "pki")


@pytest.fixture
def servers(pki: TestPki) -> Iterator[dict[str, Any]]:
    tls = tls_context(*pki.cert("server"), pki.ca)
    with (
        EmulatorServer(
            "127.0.0.1", 0, vnodes=8, shards=2, tls=tls, credentials=("admin", SECRETS["scylla"])
        ) as scylla,
        pg_tls(pki, auth="scram-sha-256") as (pg_admin, pg_port),
        redis_tls(pki, password=SECRETS["redis"]) as redis_port,
        clickhouse_tls(pki) as ch_url,
    ):
        _psql(pg_admin, f"CREATE ROLE cdcd LOGIN PASSWORD '{SECRETS['pg']}'")
        _psql(pg_admin, "CREATE DATABASE app OWNER cdcd")
        yield {"scylla": scylla, "pg_port": pg_port, "redis_port": redis_port, "ch_url": ch_url}


def client_ssl(pki: TestPki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(*pki.cert("client"))
    return ctx


def pg_dsn(pki: TestPki, port: int, password: str) -> str:
    cert, key = pki.cert("client")
    return (
        f"postgresql://cdcd:{password}@127.0.0.1:{port}/app?sslmode=verify-full"
        f"&sslrootcert={pki.ca}&sslcert={cert}&sslkey={key}"
    )


def redis_url(port: int, password: str) -> str:
    return f"rediss://:{password}@127.0.0.1:{port}/0"


def write_config(tmp: Path, pki: TestPki, s: dict[str, Any], http_port: int) -> Path:
    (tmp / "scylla_password").write_text(SECRETS["scylla"] + "\n")
    (tmp / "ch_password").write_text(SECRETS["ch"] + "\n")
    cert, key = pki.cert("client")
    tls = f'ca_file = "{pki.ca}"\ncert_file = "{cert}"\nkey_file = "{key}"'
    path = tmp / "cdcd.toml"
    path.write_text(f"""
[instance]
replica = "tls"

[source]
hosts = ["127.0.0.1:{s["scylla"].port}"]
username = "admin"
password_file = "{tmp / "scylla_password"}"
confidence_window = "1s"
poll_interval = "100ms"
window = "2s"
generation_poll = "300ms"

[source.tls]
enabled = true
{tls}

[state]
redis_url = "${{REDIS_URL}}"
key_prefix = "sec"
checkpoint_interval = "500ms"
{tls}

[http]
listen = "127.0.0.1:{http_port}"
admin_token = "${{CDCD_ADMIN_TOKEN}}"

[pipeline.batch]
max_rows = 500
max_wait = "100ms"

[pipeline.retry]
initial = "200ms"
max = "2s"

[logging]
level = "debug"
format = "json"

[destinations.pg]
type = "postgres"
dsn = "${{E2E_PG_DSN}}"
pool_size = 2

[destinations.ch]
type = "clickhouse"
url = "{s["ch_url"]}"
username = "default"
password_file = "{tmp / "ch_password"}"
{tls}

[[tables]]
source = "{TABLE}"
destinations = ["pg", "ch"]
target = "dst.items"
""")
    return path


def http(port: int, path: str, method: str = "GET", token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def redis_dump(client: redis.Redis) -> bytes:
    """Every key and every value in the database, as bytes."""
    out = bytearray()
    for key in client.scan_iter(count=1000):
        out += key + b"\n"
        kind = client.type(key)
        if kind == b"string":
            value: Any = client.get(key)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"set":
            value = client.smembers(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            value = client.xrange(key)
        else:
            value = kind
        out += repr(value).encode() + b"\n"
    return bytes(out)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, secret in SECRETS.items() if secret.encode() in data]


async def test_tls_everywhere_and_no_secret_leaks(
    tmp_path: Path, pki: TestPki, servers: dict[str, Any]
) -> None:
    s = servers
    ctx = client_ssl(pki)
    cluster = Cluster(
        ["127.0.0.1"], port=s["scylla"].port, protocol_version=4, ssl_context=ctx,
        auth_provider=PlainTextAuthProvider("admin", SECRETS["scylla"]),
    )  # fmt: skip
    cql = cluster.connect()
    cql.default_timeout = 30
    cert, key = pki.cert("client")
    chc = clickhouse_connect.get_client(
        host="127.0.0.1", port=int(s["ch_url"].rsplit(":", 1)[1]), secure=True, ca_cert=pki.ca,
        client_cert=cert, client_cert_key=key, username="default", tls_mode="strict",
        autogenerate_session_id=False,
    )  # fmt: skip
    chc.command("CREATE DATABASE IF NOT EXISTS dst")
    http_port = free_port()
    config = write_config(tmp_path, pki, s, http_port)
    dsn = pg_dsn(pki, s["pg_port"], SECRETS["pg"])
    env = {"REDIS_URL": redis_url(s["redis_port"], SECRETS["redis"]), "CDCD_ADMIN_TOKEN": SECRETS["admin"]}
    cdcd = CdcdProcess(config, http_port=http_port, pg_dsn=dsn, env=env)
    try:
        work = Workload(cql, TABLE, seed=17, partitions=8, rows_per_partition=12)
        work.create()
        cdcd.start()
        cdcd.wait_ready(90)
        done = await asyncio.to_thread(work.run, 800)
        for op in ("insert", "update", "row_delete", "partition_delete"):
            assert done.ops[op] > 0, op

        def alive() -> None:
            assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"

        schema = source_schema(cql, TABLE)
        pg = await wait_converged(cql, schema, dsn, "dst.items", timeout=120, alive=alive)
        ch = await wait_ch_converged(cql, schema, chc, "dst.items", timeout=120, alive=alive)
        assert len(pg.rows) == len(ch.rows) > 20

        # Everything cdcd shows over HTTP.
        shown = []
        for path in ("/status", "/status?verbose=true", "/readyz", "/healthz", "/metrics"):
            code, body = http(http_port, path)
            assert code == 200, (path, body)
            shown.append(body)
        code, body = http(http_port, "/admin/", token=SECRETS["admin"])
        assert code == 200, body
        shown.append(body)
        for action in json.loads(body)["actions"]:
            code, body = http(http_port, f"/admin/{action}", "POST", SECRETS["admin"])
            shown.append(body)
        code, body = http(http_port, "/admin/", token="wrong-token")
        assert code == 401
        shown.append(body)
        for text in shown:
            assert not leaks(text), (leaks(text), text[:2000])

        assert cdcd.stop() == 0, cdcd.log_tail()
        assert not cdcd.errors(), cdcd.errors()
        log = cdcd.log_text()
        assert '"level": "debug"' in log or '"level":"debug"' in log, "the scan must cover debug logging"
        assert not leaks(log), leaks(log)

        # Everything cdcd keeps in Redis.
        r = redis.Redis(
            host="127.0.0.1", port=s["redis_port"], password=SECRETS["redis"], ssl=True,
            ssl_ca_certs=pki.ca, ssl_certfile=cert, ssl_keyfile=key,
        )  # fmt: skip
        try:
            dumped = redis_dump(r)
        finally:
            r.close()
        assert b"sec:" in dumped  # checkpoints were written
        assert not leaks(dumped), leaks(dumped)

        # The errors of failed connections: wrong passwords everywhere, through check-config.
        wrong = {
            "E2E_PG_DSN": pg_dsn(pki, s["pg_port"], SECRETS["pg"] + "-wrong"),
            "REDIS_URL": redis_url(s["redis_port"], SECRETS["redis"] + "-wrong"),
            "CDCD_ADMIN_TOKEN": SECRETS["admin"],
        }
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "cdcd", "check-config", "--config", str(config)],
            cwd=ROOT, env={**cdcd.env, **wrong}, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert 'password authentication failed for user "cdcd"' in out, out
        assert "Redis at 127.0.0.1" in out, out
        assert not leaks(out), (leaks(out), out)
    finally:
        cdcd.stop()
        cdcd.kill9()
        chc.close()
        cluster.shutdown()

"""Every dependency error names the dependency, where it is (host:port, never a password) and
what the server or the network said: in the exceptions the sinks and ``Dependencies`` raise,
in ``cdcd check-config``, in ``cdcd run``'s start-up log and in /readyz.

Real servers throughout. A throwaway PostgreSQL with password authentication for TCP (the
session's test server trusts everyone) and without ``timescaledb`` in
``shared_preload_libraries`` serves the wrong-password and the TimescaleDB-not-preloaded cases.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cdcd.app.deps import Dependencies
from cdcd.config import Secret, loads
from cdcd.errors import DependencyUnavailable, SinkUnavailable, SourceUnavailable
from cdcd.sinks.clickhouse.sink import ClickHouseSink
from cdcd.sinks.postgres.sink import PostgresSink
from cdcd.sinks.timescale import TimescaleSink
from tests.conftest import PG_BIN, free_port

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD, WRONG = "cdcd_app", "right-Pass-4711", "wrong-Pass-0815"


class AuthPg:
    """A PostgreSQL 15 cluster: scram-sha-256 over TCP, trust on its unix socket (for setup),
    timescaledb installed but not preloaded."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cdcd-authpg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        opts = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off"
        )
        self.run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            opts,
            "start",
        )
        self.psql(f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        self.psql(f"CREATE DATABASE app OWNER {USER}")

    def run(self, *cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_postgres else list(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")

    def psql(self, sql: str) -> None:
        psql = shutil.which("psql") or str(PG_BIN / "psql")
        subprocess.run(
            [psql, "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
            check=True, capture_output=True,
        )  # fmt: skip

    def dsn(self, password: str) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/app"

    def stop(self) -> None:
        try:
            self.run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_pg() -> Iterator[AuthPg]:
    server = AuthPg()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_config(dsn: str, **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(
        dsn=Secret(dsn), pool_size=2, connect_timeout=5.0, command_timeout=10.0, hypertables={}, **extra
    )


async def connect_error(sink: Any) -> str:
    try:
        with pytest.raises(SinkUnavailable) as info:
            await sink.connect()
        return str(info.value)
    finally:
        await sink.aclose()


# ------------------------------------------------------------------------------- each dependency
async def test_postgres_wrong_password(auth_pg: AuthPg) -> None:
    message = await connect_error(PostgresSink("pg", pg_config(auth_pg.dsn(WRONG))))
    assert message == (
        f"pg: cannot connect to PostgreSQL at 127.0.0.1:{auth_pg.port}/app (user {USER}): "
        f'password authentication failed for user "{USER}"'
    )


async def test_postgres_wrong_port() -> None:
    port = closed_port()
    message = await connect_error(
        PostgresSink("pg", pg_config(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/app"))
    )
    assert message.startswith(f"pg: cannot connect to PostgreSQL at 127.0.0.1:{port}/app (user {USER}): "), (
        message
    )
    assert "Connection refused" in message and f"('127.0.0.1', {port})" in message, message
    assert PASSWORD not in message


async def test_timescaledb_not_preloaded_reports_the_servers_reason(
    auth_pg: AuthPg, timescaledb_available: bool
) -> None:
    """It used to say ``InterfaceError: cannot call Connection.is_closed(): connection has been
    released back to the pool``: the server ends the session (FATAL) on CREATE EXTENSION,
    asyncpg's ``Transaction.__aexit__`` then fails on the closed connection, and the sink's
    ``conn.is_closed()`` on the released pool proxy; each error hid the one before."""
    assert timescaledb_available, "timescaledb is not installed: run deploy/install.sh"
    message = await connect_error(TimescaleSink("ts", pg_config(auth_pg.dsn(PASSWORD))))
    assert message.startswith(
        f"ts: cannot load the timescaledb extension in TimescaleDB at 127.0.0.1:{auth_pg.port}/app (user {USER}): "
    ), message
    assert 'extension "timescaledb" must be preloaded' in message
    assert message.endswith(
        "add timescaledb to shared_preload_libraries in the server's postgresql.conf and restart it"
    )
    assert "InterfaceError" not in message and PASSWORD not in message


async def test_clickhouse_refused() -> None:
    port = closed_port()
    config = SimpleNamespace(url=f"http://127.0.0.1:{port}", username="reader", password=Secret("ch-Secret-99"),
                             connect_timeout=3.0, send_receive_timeout=10.0, verify_tls=True)  # fmt: skip
    message = await connect_error(ClickHouseSink("ch", config))
    assert message.startswith(
        f"ch: cannot connect to ClickHouse at http://127.0.0.1:{port} (user reader): "
    ), message
    assert f"Connect call failed ('127.0.0.1', {port})" in message
    assert "ch-Secret-99" not in message


def deps_for(source: str, redis: str) -> Dependencies:
    cfg = loads(
        f'[source]\nhosts = ["{source}"]\nconnect_timeout = "2s"\n'
        '[state]\nredis_url = "${REDIS}"\nconnect_timeout = "2s"\n'
        '[destinations.pg]\ntype = "postgres"\ndsn = "postgresql://h/db"\n'
        '[[tables]]\nsource = "a.b"\ndestinations = ["pg"]\n',
        env={"REDIS": redis},
    )
    return Dependencies(cfg)


async def test_redis_refused() -> None:
    port = closed_port()
    deps = deps_for("127.0.0.1", f"redis://:redis-Secret-7@127.0.0.1:{port}/3")
    with pytest.raises(DependencyUnavailable) as info:
        await deps.connect_redis()
    message = str(info.value)
    assert message.startswith(f"cannot connect to Redis at 127.0.0.1:{port} db 3: "), message
    assert "Connection refused" in message and "redis-Secret-7" not in message


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[int]:
    """A redis-server that requires a password (the session's test Redis has none); its port."""
    server = shutil.which("redis-server")
    assert server, "redis-server not found: run deploy/install.sh"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cdcd-authredis-")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--requirepass", "redis-Right-1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_redis_wrong_password(auth_redis: int) -> None:
    deps = deps_for("127.0.0.1", f"redis://:redis-Secret-7@127.0.0.1:{auth_redis}/0")
    with pytest.raises(DependencyUnavailable) as info:
        await deps.connect_redis()
    message = str(info.value)
    assert message.startswith(f"cannot connect to Redis at 127.0.0.1:{auth_redis} db 0: "), message
    assert "invalid username-password pair" in message and "redis-Secret-7" not in message
    deps = deps_for("127.0.0.1", f"redis://127.0.0.1:{auth_redis}/0")  # no password at all
    with pytest.raises(DependencyUnavailable) as info:
        await deps.connect_redis()
    assert str(info.value).startswith(f"cannot connect to Redis at 127.0.0.1:{auth_redis} db 0: ")
    assert "authenticated" in str(
        info.value
    )  # the server: "HELLO must be called with the client already authenticated"
    deps = deps_for("127.0.0.1", f"redis://:redis-Right-1@127.0.0.1:{auth_redis}/0")
    await deps.connect_redis()
    await deps.aclose()


async def test_scylla_refused() -> None:
    port = closed_port()
    deps = deps_for(f"127.0.0.1:{port}", "redis://127.0.0.1:1/0")
    with pytest.raises(SourceUnavailable) as info:
        await deps.connect_scylla()
    message = str(info.value)
    assert message.startswith(f"cannot connect to Scylla at 127.0.0.1:{port}: 127.0.0.1:{port}: "), message
    assert "Connection refused" in message


# ------------------------------------------------------------------- check-config, run, /readyz
def write_config(tmp_path: Path, *, scylla: str, redis: str, http_port: int = 0) -> Path:
    path = tmp_path / "cdcd.toml"
    path.write_text(
        f'[source]\nhosts = ["{scylla}"]\nconnect_timeout = "2s"\n'
        f'[state]\nredis_url = "${{REDIS_URL}}"\nconnect_timeout = "2s"\n'
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
        "[pipeline.retry]\ninitial = \"200ms\"\nmax = \"1s\"\n"
        '[destinations.pg]\ntype = "postgres"\ndsn = "${PG_DSN}"\nconnect_timeout = "3s"\n'
        '[destinations.ts]\ntype = "timescaledb"\ndsn = "${TS_DSN}"\nconnect_timeout = "3s"\n'
        '[destinations.ch]\ntype = "clickhouse"\nurl = "${CH_URL}"\npassword = "${CH_PASSWORD}"\nconnect_timeout = "3s"\n'
        '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg", "ts", "ch"]\n'
    )  # fmt: skip
    return path


def test_check_config_names_each_failure(tmp_path: Path, auth_pg: AuthPg) -> None:
    scylla, redis, ch = closed_port(), closed_port(), closed_port()
    path = write_config(tmp_path, scylla=f"127.0.0.1:{scylla}", redis="")
    env = {
        **os.environ,
        "REDIS_URL": f"redis://:redis-Secret-7@127.0.0.1:{redis}/0",
        "PG_DSN": auth_pg.dsn(WRONG),
        "TS_DSN": auth_pg.dsn(PASSWORD),
        "CH_URL": f"http://127.0.0.1:{ch}",
        "CH_PASSWORD": "ch-Secret-99",
    }
    out = subprocess.run(
        [sys.executable, "-m", "cdcd", "check-config", "--config", str(path), "--timeout", "10"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    fails = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith("FAIL ")}
    assert f"cannot connect to Redis at 127.0.0.1:{redis} db 0: " in fails["redis"]
    assert "Connection refused" in fails["redis"]
    assert f"cannot connect to Scylla at 127.0.0.1:{scylla}: " in fails["scylla"]
    assert "Connection refused" in fails["scylla"]
    lines = out.stdout.splitlines()
    (pg,) = [line for line in lines if line.startswith("FAIL destination pg ")]
    assert (
        f"pg: cannot connect to PostgreSQL at 127.0.0.1:{auth_pg.port}/app (user {USER}): "
        f'password authentication failed for user "{USER}"'
    ) in pg
    (ts,) = [line for line in lines if line.startswith("FAIL destination ts ")]
    assert (
        f"TimescaleDB at 127.0.0.1:{auth_pg.port}/app" in ts
        and 'extension "timescaledb" must be preloaded' in ts
    )
    (chl,) = [line for line in lines if line.startswith("FAIL destination ch ")]
    assert f"ch: cannot connect to ClickHouse at http://127.0.0.1:{ch} (user default): " in chl
    for line in lines:
        assert "Type" not in line.split(":")[0]  # no bare exception class as the message
    everything = out.stdout + out.stderr
    for secret in (WRONG, PASSWORD, "redis-Secret-7", "ch-Secret-99"):
        assert secret not in everything


def cdcd_run(path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cdcd", "run", "--config", str(path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def http_json(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_run_logs_and_readyz_name_each_destination_failure(
    tmp_path: Path, auth_pg: AuthPg, emulator: Any, redis_url: str
) -> None:
    """Scylla and Redis up, every destination failing its own way: the start-up log and /readyz
    say which, where and why."""
    from cdcd.scylla import ScyllaSession

    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    try:
        await session.execute(
            "CREATE KEYSPACE shop WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        )
        await session.execute(
            "CREATE TABLE shop.orders (id int PRIMARY KEY, v text) WITH cdc = {'enabled': true}"
        )
    finally:
        await session.aclose()
    ch, http_port = closed_port(), free_port()
    path = write_config(tmp_path, scylla=f"{emulator.host}:{emulator.port}", redis="", http_port=http_port)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PG_DSN": auth_pg.dsn(WRONG),
        "TS_DSN": auth_pg.dsn(PASSWORD),
        "CH_URL": f"http://127.0.0.1:{ch}",
        "CH_PASSWORD": "ch-Secret-99",
    }
    proc = cdcd_run(path, env)
    want = {"destination:pg", "destination:ts", "destination:ch"}
    try:
        deadline = time.monotonic() + 60
        readyz: dict[str, Any] = {}
        while time.monotonic() < deadline and set(readyz) < want:
            await asyncio.sleep(0.3)
            assert proc.poll() is None, proc.communicate()
            try:
                _, body = await asyncio.to_thread(http_json, http_port, "/readyz")
            except OSError:
                continue
            readyz = {k: v for k, v in (body.get("checks") or {}).items() if k in want and not v["ok"]}
        assert set(readyz) == want, readyz
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    pg_words = f'PostgreSQL at 127.0.0.1:{auth_pg.port}/app (user {USER}): password authentication failed for user "{USER}"'
    assert pg_words in readyz["destination:pg"]["detail"]
    assert 'extension "timescaledb" must be preloaded' in readyz["destination:ts"]["detail"]
    assert f"ClickHouse at http://127.0.0.1:{ch} (user default)" in readyz["destination:ch"]["detail"]
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    unhealthy = {r["dependency"]: r["error"] for r in records if r["message"] == "dependency unhealthy"}
    assert pg_words in unhealthy["destination:pg"]
    assert f"TimescaleDB at 127.0.0.1:{auth_pg.port}/app" in unhealthy["destination:ts"]
    assert 'extension "timescaledb" must be preloaded' in unhealthy["destination:ts"]
    assert f"cannot connect to ClickHouse at http://127.0.0.1:{ch}" in unhealthy["destination:ch"]
    for error in unhealthy.values():
        assert not error.startswith(("SinkUnavailable", "InterfaceError", "OperationalError")), error
    for secret in (WRONG, PASSWORD, "ch-Secret-99"):
        assert secret not in out + err

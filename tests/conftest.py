"""Real servers for the test suite, started fresh on free ports and stopped at the end.

Session-scoped servers: a throwaway PostgreSQL 15 cluster (timescaledb preloaded when installed),
a redis-server without persistence, and a ClickHouse endpoint (``tests.clickhouse_server``, the real
chDB engine behind our HTTP front) in a subprocess. Each can be replaced by an existing server via
``CDCD_TEST_PG_DSN``, ``CDCD_TEST_REDIS_URL`` and ``CDCD_TEST_CLICKHOUSE_URL``.

Function-scoped isolation: ``pg_dsn`` is a fresh database, ``redis_prefix`` a unique key prefix,
``ch_database`` a fresh ClickHouse database, ``emulator`` a fresh Scylla emulator.

A missing server binary is an error naming the install script, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "run `bash deploy/install.sh` (it installs PostgreSQL, Redis, TimescaleDB and chdb)"
PG_BIN = Path(os.environ.get("CDCD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready within {timeout}s (last error: {last!r})")


def _require(path: Path | str | None, what: str) -> str:
    if path is None or not Path(path).exists():
        raise RuntimeError(f"{what} not found ({path}); {INSTALL_HINT}")
    return str(path)


# --------------------------------------------------------------------------------------- PostgreSQL


class _PgCluster:
    """A throwaway cluster; ``options`` are more ``-c name=value`` settings, ``hba`` replaces
    pg_hba.conf (tests/tls_servers.py runs one with TLS)."""

    def __init__(self, options: str = "", hba: str | None = None) -> None:
        initdb = _require(PG_BIN / "initdb", "PostgreSQL initdb")
        pg_ctl = _require(PG_BIN / "pg_ctl", "PostgreSQL pg_ctl")
        self.pg_ctl = pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="cdcd-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0  # initdb refuses root
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        libdir = (
            subprocess.run(
                [str(PG_BIN / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=False
            ).stdout.strip()
            or "/usr/lib/postgresql/15/lib"
        )
        self.timescaledb = Path(libdir, "timescaledb.so").exists()
        opts = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        if self.timescaledb:
            opts += " -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
        opts += f" {options}" if options else ""
        if hba is not None:
            (self.data / "pg_hba.conf").write_text(hba)
        self._run([pg_ctl, "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", opts, "start"])
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


def _psql(dsn: str, sql: str) -> None:
    psql = shutil.which("psql") or _require(PG_BIN / "psql", "psql")
    proc = subprocess.run(
        [psql, dsn, "-v", "ON_ERROR_STOP=1", "-qc", sql], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"psql {sql!r} failed: {proc.stderr}")


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """DSN of the session's PostgreSQL server (its ``postgres`` database)."""
    if env := os.environ.get("CDCD_TEST_PG_DSN"):
        yield env
        return
    cluster = _PgCluster()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


@contextlib.contextmanager
def fresh_database(server_dsn: str, prefix: str = "t") -> Iterator[str]:
    """A new empty database on ``server_dsn``'s server (its DSN), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    _psql(server_dsn, f'CREATE DATABASE "{name}"')
    base, _, _ = server_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with contextlib.suppress(Exception):
            _psql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database for this test (dropped afterwards)."""
    with fresh_database(pg_server_dsn) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def timescaledb_available(pg_server_dsn: str) -> bool:
    psql = shutil.which("psql") or str(PG_BIN / "psql")
    out = subprocess.run(
        [psql, pg_server_dsn, "-Atqc", "SELECT count(*) FROM pg_available_extensions WHERE name='timescaledb'"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() == "1"


# -------------------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the session's Redis server (no persistence)."""
    if env := os.environ.get("CDCD_TEST_REDIS_URL"):
        yield env
        return
    server = _require(shutil.which("redis-server"), "redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cdcd-redis-")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    started = time.monotonic()
    try:
        wait_until(ping, 10, "redis-server")
        # cdcd takes no free lease while Redis has been up for less than a lease TTL (10 s; it
        # cannot tell a fresh Redis from one restarted empty under running replicas): wait that
        # out once, so that tests do not each find their groups unleased for a while.
        time.sleep(max(0.0, started + 11.5 - time.monotonic()))
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to this test."""
    return f"cdcdtest:{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------------------- ClickHouse


@pytest.fixture(scope="session")
def clickhouse_url() -> Iterator[str]:
    """http://host:port of a ClickHouse endpoint (chDB engine behind tests.clickhouse_server)."""
    if env := os.environ.get("CDCD_TEST_CLICKHOUSE_URL"):
        yield env.rstrip("/")
        return
    try:
        import chdb  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"chdb is not installed; {INSTALL_HINT}") from exc
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="cdcd-ch-")
    log = open(os.path.join(workdir, "server.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.clickhouse_server", "--host", "127.0.0.1", "--port", str(port),
         "--path", os.path.join(workdir, "data")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: urllib.request.urlopen(f"{url}/ping", timeout=1).status == 200, 60, "ClickHouse")
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def ch_database(clickhouse_url: str) -> Iterator[str]:
    """A fresh ClickHouse database for this test."""
    name = f"t_{uuid.uuid4().hex[:16]}"

    def command(sql: str) -> None:
        req = urllib.request.Request(clickhouse_url + "/", data=sql.encode(), method="POST")
        urllib.request.urlopen(req, timeout=30).read()

    command(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            command(f"DROP DATABASE IF EXISTS `{name}`")


# ---------------------------------------------------------------------------------- Scylla emulator


@pytest.fixture
def emulator() -> Iterator[Any]:
    """A fresh Scylla CDC emulator on a free port (8 vnodes, 2 shards), in this process."""
    from tests.scylla_emulator.server import EmulatorServer

    server = EmulatorServer("127.0.0.1", 0, vnodes=8, shards=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[Any]:
    """One emulator shared by the whole session (tests must use their own keyspaces)."""
    from tests.scylla_emulator.server import EmulatorServer

    server = EmulatorServer("127.0.0.1", 0, vnodes=8, shards=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()

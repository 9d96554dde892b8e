"""Fixtures of the end-to-end tests: a driver session on the emulator and a ``cdcd run`` factory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from cassandra.cluster import Cluster

from tests.conftest import fresh_database, wait_until
from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec, free_port, write_config

MakeCdcd = Callable[..., CdcdProcess]


@pytest.fixture
def cql(emulator: Any) -> Iterator[Any]:
    """A driver session on the test's emulator (protocol v4, default row factory)."""
    cluster = Cluster([emulator.host], port=emulator.port, protocol_version=4)
    session = cluster.connect()
    session.default_timeout = 30
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.fixture
def make_cdcd(
    tmp_path: Path, emulator: Any, redis_url: str, redis_prefix: str, pg_dsn: str
) -> Iterator[MakeCdcd]:
    """``make_cdcd(tables, options=None, env=None)`` writes a config and returns a (not started)
    CdcdProcess; ``env`` adds environment variables (secrets of extra destinations).

    Every process is stopped at teardown; its log tail is printed (pytest shows it on failure).
    """
    made: list[CdcdProcess] = []

    def make(
        tables: Sequence[TableSpec], options: ConfigOptions | None = None, env: dict[str, str] | None = None
    ) -> CdcdProcess:
        port = free_port()
        cfg = write_config(
            tmp_path / f"cdcd-{len(made)}.toml",
            hosts=[f"{emulator.host}:{emulator.port}"],
            redis_url=redis_url,
            key_prefix=redis_prefix,
            tables=tables,
            http_port=port,
            options=options,
        )
        proc = CdcdProcess(cfg, http_port=port, pg_dsn=pg_dsn, env=env)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        with contextlib.suppress(Exception):
            proc.stop(timeout=30)
        proc.kill9()
        print(proc.log_tail(120))


@pytest.fixture
def ts_dsn(pg_server_dsn: str, timescaledb_available: bool) -> Iterator[str]:
    """DSN of a second fresh database on the session PostgreSQL server, for a TimescaleDB
    destination next to the ``pg`` one (cdcd creates the extension); dropped afterwards."""
    assert timescaledb_available, "the timescaledb extension is not installed: run deploy/install.sh"
    with fresh_database(pg_server_dsn, "ts") as dsn:
        yield dsn


class RedisServer:
    """A redis-server of this test, without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        assert self.binary, "redis-server not found; run `bash deploy/install.sh`"
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cdcd-redis-loss-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self.client().ping(), 10, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def keys(self, pattern: str) -> list[bytes]:
        return list(self.client().scan_iter(match=pattern, count=1000))


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)

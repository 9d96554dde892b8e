"""The ``cdcd`` command line, run as a real subprocess where it matters."""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cdcd import __version__
from cdcd.cli import parse_args, parse_start_at

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = {
    "PG_DSN": "postgresql://cdcd:pg-secret@127.0.0.1:5432/analytics",
    "TS_DSN": "postgresql://cdcd:ts-secret@127.0.0.1:5433/metrics",
    "CH_PASSWORD": "ch-secret",
    "CDCD_ADMIN_TOKEN": "admin-secret",
}


def cdcd(*args: str, env: dict[str, str] | None = None, drop: str = "") -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != drop}
    command = [sys.executable, "-m", "cdcd", *args]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=60
    )


def test_version() -> None:
    out = cdcd("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"cdcd {__version__}"


def test_no_command_is_a_usage_error() -> None:
    out = cdcd()
    assert out.returncode == 2
    assert "COMMAND" in out.stderr


def test_check_config_offline_accepts_the_example() -> None:
    out = cdcd("check-config", "--config", "cdcd.toml.example", "--offline", env=EXAMPLE_ENV)
    assert out.returncode == 0, out.stderr
    assert "config cdcd.toml.example: ok (2 tables, destinations: pg, ts, ch)" in out.stdout


def test_bad_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "cdcd.toml"
    bad.write_text(
        '[destinations.pg]\ntype = "postgres"\ndsn = "x"\n[[tables]]\nsource = "a.b"\ndestinations = ["pq"]\n'
    )
    for command in ("check-config", "run"):
        out = cdcd(command, "--config", str(bad))
        assert out.returncode == 2
        assert f'{bad}: tables[0].destinations[0]: unknown destination "pq"; configured: pg' in out.stderr


def test_missing_env_var_is_reported_without_running() -> None:
    out = cdcd("check", "-c", "cdcd.toml.example", "--offline", env=EXAMPLE_ENV, drop="TS_DSN")
    assert out.returncode == 2
    assert "destinations.ts.dsn: environment variable TS_DSN is not set" in out.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_config_reports_each_dependency(tmp_path: Path, redis_url: str) -> None:
    """Real Redis up, Scylla down: the report names both, and the exit code is 1."""
    cfg = tmp_path / "cdcd.toml"
    cfg.write_text(
        f'[source]\nhosts = ["127.0.0.1:{_closed_port()}"]\nconnect_timeout = "2s"\n'
        f'[state]\nredis_url = "{redis_url}"\n'
        '[destinations.pg]\ntype = "postgres"\ndsn = "postgresql://postgres@127.0.0.1:1/db"\n'
        '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg"]\n'
    )
    out = cdcd("check-config", "--config", str(cfg), "--timeout", "10")
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith("ok   redis ") for line in lines), out.stdout
    assert any(line.startswith("FAIL scylla ") and "Connection refused" in line for line in lines), out.stdout
    assert any(line.startswith("FAIL table shop.orders ") for line in lines), out.stdout
    assert any(line.startswith("FAIL destination pg (postgres) ") for line in lines), out.stdout
    assert "checks failed" in out.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "now"),
        ("earliest", "earliest"),
        ("2026-01-31T12:00:00Z", datetime.datetime(2026, 1, 31, 12, tzinfo=datetime.UTC)),
        (
            "2026-01-31T12:00:00+02:00",
            datetime.datetime(2026, 1, 31, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        ),
    ],
)
def test_start_at(text: str, expected: object) -> None:
    assert parse_start_at(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-01-31T12:00:00", "31/01/2026"])
def test_bad_start_at(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_start_at(text)


def test_run_arguments() -> None:
    args = parse_args(["run", "--config", "x.toml", "--start-at", "earliest", "--log-level", "debug"])
    assert (args.command, args.config, args.start_at, args.log_level) == (
        "run",
        "x.toml",
        "earliest",
        "debug",
    )
    assert parse_args(["run", "-c", "x.toml"]).start_at is None


def test_check_config_against_live_servers(
    tmp_path: Path, emulator: object, redis_url: str, pg_dsn: str
) -> None:
    """Everything reachable: each table's CDC setting is checked, the PostgreSQL sink connects."""
    import asyncio

    from cdcd.scylla import ScyllaSession

    async def schema() -> None:
        host, port = emulator.host, emulator.port  # type: ignore[attr-defined]
        session = await ScyllaSession.connect([f"{host}:{port}"], request_timeout=10.0)
        try:
            await session.execute(
                "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
            )
            await session.execute(
                "CREATE TABLE ks.good (pk int PRIMARY KEY, v text) WITH cdc = {'enabled': true}"
            )
            await session.execute("CREATE TABLE ks.plain (pk int PRIMARY KEY, v text)")
        finally:
            await session.aclose()

    asyncio.run(schema())
    cfg = tmp_path / "cdcd.toml"
    cfg.write_text(
        f'[source]\nhosts = ["{emulator.host}:{emulator.port}"]\n'  # type: ignore[attr-defined]
        f'[state]\nredis_url = "{redis_url}"\n'
        '[destinations.pg]\ntype = "postgres"\ndsn = "${TEST_PG_DSN}"\n'
        '[[tables]]\nsource = "ks.good"\ndestinations = ["pg"]\n'
        '[[tables]]\nsource = "ks.plain"\ndestinations = ["pg"]\n'
    )
    out = cdcd("check-config", "--config", str(cfg), env={"TEST_PG_DSN": pg_dsn})
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith("ok   scylla ") for line in lines), out.stdout
    assert any(
        line.startswith("ok   table ks.good ") and "CDC enabled (ttl 86400 s" in line for line in lines
    )
    assert any(
        line.startswith("FAIL table ks.plain ") and "tables[1].source: CDC is not enabled on ks.plain" in line
        for line in lines
    ), out.stdout
    assert any(line.startswith("ok   destination pg (postgres) ") for line in lines), out.stdout
    assert "1 of 5 checks failed" in out.stderr

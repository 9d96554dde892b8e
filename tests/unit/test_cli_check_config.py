"""``cdcd check-config`` as a newcomer meets it: every configuration error in one run, and the
endpoints it resolved (a left-out ``[source]``/``[state]`` means localhost) shown before the checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECRET_VARS = ("PG_DSN", "TS_DSN", "CH_PASSWORD", "CDCD_ADMIN_TOKEN")


def cdcd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cdcd", *args],
        check=False,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=60,
    )


def test_every_missing_variable_in_one_run() -> None:
    out = cdcd("check-config", "--config", "cdcd.toml.example", "--offline")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "cdcd: configuration error: cdcd.toml.example: http.admin_token: environment variable "
        "CDCD_ADMIN_TOKEN is not set",
        "cdcd: configuration error: cdcd.toml.example: destinations.pg.dsn: environment variable PG_DSN is not set",
        "cdcd: configuration error: cdcd.toml.example: destinations.ts.dsn: environment variable TS_DSN is not set",
        "cdcd: configuration error: cdcd.toml.example: destinations.ch.password: environment variable "
        "CH_PASSWORD is not set",
        "cdcd: 4 configuration errors; nothing was started",
    ]
    assert out.stdout == ""


def test_errors_of_several_kinds_in_one_run(tmp_path: Path) -> None:
    cfg = tmp_path / "cdcd.toml"
    cfg.write_text(
        "[source]\nfetch_size = 0\n"
        '[destinations.pg]\ntype = "postgres"\ndsn = "${PG_DSN}"\n'
        '[destinations.ch]\ntype = "clickhouse"\nurl = "http://default:pw@127.0.0.1:8123"\n'
        '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg", "ch", "ts"]\n'
    )
    out = cdcd("check-config", "--config", str(cfg))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines == [
        f"cdcd: configuration error: {cfg}: destinations.pg.dsn: environment variable PG_DSN is not set",
        f"cdcd: configuration error: {cfg}: source.fetch_size: expected an integer >= 1, got 0",
        f"cdcd: configuration error: {cfg}: destinations.ch.url: the URL holds a password: give the user as "
        'username and the password as password = "${VAR}" or password_file, not the config file',
        f'cdcd: configuration error: {cfg}: tables[0].destinations[2]: unknown destination "ts"; '
        "configured: ch, pg",
        "cdcd: 4 configuration errors; nothing was started",
    ]
    assert "pw@" not in out.stderr


def test_ok_output_shows_the_resolved_endpoints(tmp_path: Path) -> None:
    """No [source] and no [state]: the output says localhost, the default, and never a secret."""
    cfg = tmp_path / "cdcd.toml"
    cfg.write_text(
        '[destinations.pg]\ntype = "postgres"\ndsn = "${PG_DSN}"\n'
        '[destinations.ch]\ntype = "clickhouse"\nurl = "http://ch.example:8124"\npassword = "${CH_PASSWORD}"\n'
        '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg", "ch"]\n'
    )
    env = {"PG_DSN": "postgresql://cdcd:pg-hunter2@db.example:5433/analytics", "CH_PASSWORD": "ch-hunter2"}
    out = cdcd("check-config", "--config", str(cfg), "--offline", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"config {cfg}: ok (1 tables, destinations: pg, ch)",
        "endpoints (not contacted: --offline):",
        "  scylla                       127.0.0.1:9042 (the default)",
        "  redis                        127.0.0.1:6379 db 0 (the default)",
        "  destination pg (postgres)    db.example:5433/analytics (user cdcd)",
        "  destination ch (clickhouse)  http://ch.example:8124 (user default)",
    ]
    assert "hunter2" not in out.stdout + out.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_endpoints_come_before_the_checks(tmp_path: Path, redis_url: str) -> None:
    port = _closed_port()
    cfg = tmp_path / "cdcd.toml"
    cfg.write_text(
        f'[source]\nhosts = ["127.0.0.1:{port}"]\nconnect_timeout = "2s"\n'
        f'[state]\nredis_url = "{redis_url}"\n'
        '[destinations.pg]\ntype = "postgres"\ndsn = "${PG_DSN}"\n'
        '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg"]\n'
    )
    env = {"PG_DSN": f"postgresql://postgres:pg-hunter2@127.0.0.1:{port}/db"}
    out = cdcd("check-config", "--config", str(cfg), "--timeout", "10", env=env)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    redis_where = redis_url.removeprefix("redis://").replace("/", " db ")
    assert lines[1:5] == [
        "endpoints:",
        f"  scylla                     127.0.0.1:{port}",
        f"  redis                      {redis_where}",
        f"  destination pg (postgres)  127.0.0.1:{port}/db (user postgres)",
    ]
    assert lines[5].startswith("ok   redis "), lines
    assert "hunter2" not in out.stdout + out.stderr

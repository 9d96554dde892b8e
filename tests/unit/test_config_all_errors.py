"""One pass over cdcd.toml reports every problem (each unset variable, each bad key), literal
secrets are refused in every form a DSN or URL can carry them, and the endpoints cdcd will
connect to are shown without secrets."""

from __future__ import annotations

import pytest

from cdcd.config import loads
from cdcd.config.endpoints import (
    clickhouse_endpoint,
    endpoints,
    postgres_endpoint,
    redis_endpoint,
    scylla_endpoint,
)
from cdcd.errors import ConfigError, ConfigErrors

TABLE = '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg"]\n'
PG = '[destinations.pg]\ntype = "postgres"\ndsn = "${PG_DSN}"\n'
ENV = {"PG_DSN": "postgresql://u:hunter2@127.0.0.1/db"}


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, file="cdcd.toml", env=ENV if env is None else env)
    return [str(e) for e in getattr(info.value, "errors", [info.value])]


# ------------------------------------------------------------------------------ literal secrets
@pytest.mark.parametrize(
    ("dest", "key", "expected"),
    [
        pytest.param(
            '[destinations.ch]\ntype = "clickhouse"\nurl = "http://default:s3cret@ch.example:8123"\n',
            "destinations.ch.url",
            'the URL holds a password: give the user as username and the password as password = "${VAR}" '
            "or password_file, not the config file",
            id="clickhouse url with user:password@",
        ),
        pytest.param(
            '[destinations.pg2]\ntype = "postgres"\ndsn = "host=db.example dbname=a user=u password=s3cret"\n',
            "destinations.pg2.dsn",
            'the DSN holds a password: use an environment variable ("${VAR}") or dsn_file, not the config file',
            id="libpq keyword dsn with password=",
        ),
        pytest.param(
            '[destinations.pg2]\ntype = "postgres"\ndsn = "postgresql://u@db.example/a?password=s3cret"\n',
            "destinations.pg2.dsn",
            'the URL query holds a password: use an environment variable ("${VAR}") or dsn_file',
            id="?password= in a dsn url",
        ),
        pytest.param(
            '[destinations.pg2]\ntype = "postgres"\ndsn = "postgresql://db.example/a?sslmode=require&PassWord=s3cret"\n',
            "destinations.pg2.dsn",
            "the URL query holds a password",
            id="?password= after another parameter, any case",
        ),
        pytest.param(
            '[state]\nredis_url = "redis://db.example:6379/0?password=s3cret"\n',
            "state.redis_url",
            'the URL query holds a password: use an environment variable ("${VAR}") or redis_url_file',
            id="?password= in the redis url",
        ),
    ],
)
def test_literal_secrets_are_refused(dest: str, key: str, expected: str) -> None:
    (message,) = [m for m in errors_of(PG + dest + TABLE) if "holds a password" in m]
    assert message.startswith(f"cdcd.toml: {key}: "), message
    assert expected in message
    assert "s3cret" not in message


def test_the_same_secrets_from_the_environment_are_accepted() -> None:
    env = {
        **ENV,
        "KW": "host=db.example dbname=a user=u password=s3cret",
        "Q": "postgresql://u@db.example/a?password=s3cret",
    }
    text = PG + '[destinations.kw]\ntype = "postgres"\ndsn = "${Q}"\n' + TABLE
    cfg = loads(text, env=env)
    assert cfg.destinations["kw"].dsn.get() == env["Q"]  # type: ignore[union-attr]


def test_keyword_dsn_is_not_a_url_cdcd_can_use() -> None:
    """asyncpg takes URLs only: a libpq keyword DSN (even from the environment, without a
    password) is refused with the form expected, and its value is not shown."""
    env = {**ENV, "KW": "host=db.example dbname=a user=u"}
    (message,) = errors_of(PG + '[destinations.kw]\ntype = "postgres"\ndsn = "${KW}"\n' + TABLE, env)
    assert message.startswith("cdcd.toml: destinations.kw.dsn: expected a postgresql:// URL"), message
    assert "db.example" not in message


def test_a_clickhouse_url_without_password_is_fine() -> None:
    cfg = loads(
        PG + '[destinations.ch]\ntype = "clickhouse"\nurl = "http://ch.example:8123"\n' + TABLE, env=ENV
    )
    assert cfg.destinations["ch"].url == "http://ch.example:8123"  # type: ignore[union-attr]


# -------------------------------------------------------------------------- every error at once
def test_every_missing_variable_and_every_error_in_one_pass() -> None:
    text = (
        "[source]\nhostz = ['a']\nfetch_size = 'x'\n"
        "[state]\nredis_url = '${REDIS_URL}'\n"
        "[http]\nadmin_token = 'abc'\n"
        + PG
        + "pool = 3\n"
        + '[destinations.ch]\ntype = "clickhouse"\npassword = "${CH_PASSWORD}"\n'
        + '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg", "nope"]\ndelete = "purge"\n'
    )
    with pytest.raises(ConfigErrors) as info:
        loads(text, file="cdcd.toml", env={})
    got = [str(e) for e in info.value.errors]
    assert got == [
        "cdcd.toml: state.redis_url: environment variable REDIS_URL is not set",
        "cdcd.toml: destinations.pg.dsn: environment variable PG_DSN is not set",
        "cdcd.toml: destinations.ch.password: environment variable CH_PASSWORD is not set",
        "cdcd.toml: source.hostz: unknown key; expected one of: hosts, username, password, password_file, "
        "local_dc, consistency, confidence_window, poll_interval, window, max_window, generation_poll, "
        "fetch_size, request_timeout, connect_timeout, tablet_group_size, max_concurrent_reads, max_read_rate, tls, "
        "schema_check_interval",
        'cdcd.toml: source.fetch_size: expected an integer, got "x"',
        "cdcd.toml: destinations.pg.pool: unknown key; expected one of: create_tables, batch_max_rows, "
        "batch_max_wait, offsets_table, offsets_schema, add_bookkeeping_columns, dsn, dsn_file, pool_size, connect_timeout, command_timeout",
        'cdcd.toml: tables[0].delete: expected one of "hard", "soft", "tombstone", got "purge"',
        "cdcd.toml: http.admin_token: secrets must not be written in the config file: use an environment "
        'variable ("${VAR}") or admin_token_file',
        'cdcd.toml: tables[0].destinations[1]: unknown destination "nope"; configured: ch, pg',
    ]
    # the first error's attributes, and one line per error
    assert (info.value.file, info.value.key) == ("cdcd.toml", "state.redis_url")
    assert str(info.value).splitlines() == got


def test_an_unset_variable_is_reported_once() -> None:
    """The empty stand-in of an unset variable (an empty secret, a host that is not one) is not
    reported as a second problem."""
    text = "[source]\nhosts = ['${SCYLLA_HOST}']\nwindow = '${WINDOW}'\n" + PG + TABLE
    assert errors_of(text, {}) == [
        "cdcd.toml: source.hosts[0]: environment variable SCYLLA_HOST is not set",
        "cdcd.toml: source.window: environment variable WINDOW is not set",
        "cdcd.toml: destinations.pg.dsn: environment variable PG_DSN is not set",
    ]


def test_a_duplicate_table_is_one_error() -> None:
    assert errors_of(PG + TABLE + TABLE) == [
        "cdcd.toml: tables[1].source: shop.orders is already configured in tables[0]"
    ]


def test_errors_in_several_destinations_and_files(tmp_path: object) -> None:
    text = (
        '[destinations.a]\ntype = "postgres"\ndsn = "${PG_DSN}"\npool_size = 0\n'
        '[destinations.b]\ntype = "postgres"\ndsn = "${PG_DSN}"\npool_size = "x"\n'
        '[destinations.c]\ntype = "clickhouse"\npassword_file = "/nonexistent/pw"\n'
        '[[tables]]\nsource = "shop.orders"\ndestinations = ["a", "b", "c"]\n'
    )
    got = errors_of(text)
    assert got == [
        "cdcd.toml: destinations.a.pool_size: expected an integer >= 1, got 0",
        'cdcd.toml: destinations.b.pool_size: expected an integer, got "x"',
        "cdcd.toml: destinations.c.password_file: file '/nonexistent/pw' does not exist or is not a regular file",
    ]


# ------------------------------------------------------------------------------------- endpoints
def test_endpoints_name_host_port_and_never_a_password() -> None:
    assert scylla_endpoint(["10.0.0.1", "10.0.0.2:9043", "[::1]:9042"]) == (
        "10.0.0.1:9042, 10.0.0.2:9043, [::1]:9042"
    )
    assert redis_endpoint("redis://:pw@cache.example:6380/2") == "cache.example:6380 db 2"
    assert redis_endpoint("rediss://user:pw@cache.example") == "cache.example:6379 db 0 (TLS)"
    assert redis_endpoint("unix:///run/redis.sock") == "unix socket /run/redis.sock"
    assert postgres_endpoint("postgresql://cdcd:pw@db.example:5433/analytics?sslmode=require") == (
        "db.example:5433/analytics (user cdcd)"
    )
    assert postgres_endpoint("postgresql://cdcd:pw@h1,h2:5433/db") == "h1:5432, h2:5433/db (user cdcd)"
    assert (
        postgres_endpoint("postgresql:///db?host=/run/postgresql")
        == "unix socket /run/postgresql, database db"
    )
    assert postgres_endpoint("postgresql:///db") == (
        "the default host (PGHOST or the local socket), database db"
    )
    assert clickhouse_endpoint("https://ch.example", "reader") == "https://ch.example:8443 (user reader)"


def test_endpoints_of_a_config_mark_defaults() -> None:
    cfg = loads(PG + TABLE, env=ENV)
    assert endpoints(cfg) == [
        ("scylla", "127.0.0.1:9042 (the default)"),
        ("redis", "127.0.0.1:6379 db 0 (the default)"),
        ("destination pg (postgres)", "127.0.0.1:5432/db (user u)"),
    ]
    assert "hunter2" not in repr(endpoints(cfg))

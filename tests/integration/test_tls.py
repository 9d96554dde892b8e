"""TLS to every dependency, verified, on real servers that speak TLS only (tests/tls_servers.py):
PostgreSQL (``sslmode=verify-full``), Redis (``rediss://`` on its tls-port), the ClickHouse endpoint
over HTTPS and the Scylla emulator; every server asks for a client certificate (mutual TLS).

Each dependency connects with the right CA, host name and client certificate; and fails, with an
error naming the dependency, where it is and what is wrong (and never by falling back to
plaintext), when the CA is unknown, the certificate is for another host, the client certificate
is missing, or the server does not speak TLS.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdcd.app.deps import Dependencies
from cdcd.config import loads
from cdcd.errors import DependencyUnavailable, SinkUnavailable, SourceUnavailable
from tests.scylla_emulator.server import EmulatorServer, tls_context
from tests.tls import TestPki
from tests.tls_servers import clickhouse_tls, pg_tls, redis_tls

pytestmark = pytest.mark.asyncio

NOT_TRUSTED = "TLS: the server's certificate is not signed by a CA cdcd trusts"
WRONG_HOST = "TLS: the server's certificate does not match the host name"
NO_TLS = "TLS: the server did not answer"


@pytest.fixture(scope="module")
def pki() -> Iterator[TestPki]:
    with tempfile.TemporaryDirectory(prefix="cdcd-pki-") as d:
        yield TestPki(Path(d) / "pki")


@pytest.fixture(scope="module")
def pg(pki: TestPki) -> Iterator[int]:
    with pg_tls(pki) as (_admin, port):
        yield port


@pytest.fixture(scope="module")
def pg_wrong_host(pki: TestPki) -> Iterator[int]:
    with pg_tls(pki, cert="wrong-host") as (_admin, port):
        yield port


@pytest.fixture(scope="module")
def redis(pki: TestPki) -> Iterator[int]:
    with redis_tls(pki) as port:
        yield port


@pytest.fixture(scope="module")
def clickhouse(pki: TestPki) -> Iterator[str]:
    with clickhouse_tls(pki) as url:
        yield url


@pytest.fixture(scope="module")
def scylla(pki: TestPki) -> Iterator[EmulatorServer]:
    with EmulatorServer(
        "127.0.0.1", 0, vnodes=4, shards=2, tls=tls_context(*pki.cert("server"), pki.ca)
    ) as s:
        yield s


def deps(pki: TestPki, *, scylla: str = "127.0.0.1:9", redis: str = "redis://127.0.0.1:9/0",
         source_tls: str = "", state_tls: str = "", pg: str = "postgresql://127.0.0.1:9/x",
         ch: str = "http://127.0.0.1:9", ch_tls: str = "") -> Dependencies:  # fmt: skip
    cfg = loads(
        f'[source]\nhosts = ["{scylla}"]\nconnect_timeout = "3s"\nrequest_timeout = "3s"\n'
        f"[source.tls]\n{source_tls}\n"
        f'[state]\nredis_url = "${{REDIS}}"\nconnect_timeout = "3s"\n{state_tls}\n'
        '[destinations.pg]\ntype = "postgres"\ndsn = "${PG}"\n'
        f'[destinations.ch]\ntype = "clickhouse"\nurl = "{ch}"\nconnect_timeout = "3s"\n{ch_tls}\n'
        '[[tables]]\nsource = "a.b"\ndestinations = ["pg", "ch"]\n',
        env={"REDIS": redis, "PG": pg},
    )
    return Dependencies(cfg)


def client(pki: TestPki) -> str:
    cert, key = pki.cert("client")
    return f'cert_file = "{cert}"\nkey_file = "{key}"\n'


def pg_dsn(pki: TestPki, port: int, host: str = "127.0.0.1", ca: str | None = None, cert: bool = True) -> str:
    dsn = f"postgresql://postgres@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={ca or pki.ca}"
    if cert:
        c, k = pki.cert("client")
        dsn += f"&sslcert={c}&sslkey={k}"
    return dsn


async def connect(d: Dependencies, what: str) -> Any:
    try:
        if what == "scylla":
            return await d.connect_scylla()
        if what == "redis":
            return await d.connect_redis()
        return await d.connect_sink(what)
    finally:
        await d.aclose()


async def failure(d: Dependencies, what: str) -> str:
    with pytest.raises((SourceUnavailable, DependencyUnavailable, SinkUnavailable)) as info:
        await connect(d, what)
    return str(info.value)


# ------------------------------------------------------------------------------------ it works


async def test_all_four_connect_with_verified_mutual_tls(
    pki: TestPki, pg: int, redis: int, clickhouse: str, scylla: EmulatorServer
) -> None:
    d = deps(
        pki,
        scylla=f"127.0.0.1:{scylla.port}",
        source_tls=f'enabled = true\nca_file = "{pki.ca}"\n{client(pki)}',
        redis=f"rediss://127.0.0.1:{redis}/0",
        state_tls=f'ca_file = "{pki.ca}"\n{client(pki)}',
        pg=pg_dsn(pki, pg),
        ch=clickhouse,
        ch_tls=f'ca_file = "{pki.ca}"\n{client(pki)}',
    )
    try:
        session = await d.connect_scylla()
        rows = await session.execute("SELECT release_version FROM system.local")
        assert rows and rows[0]["release_version"]
        r = await d.connect_redis()
        assert await r.ping() is True
        await d.connect_sink("pg")  # connect + healthcheck (a query) over TLS
        await d.connect_sink("ch")
    finally:
        await d.aclose()


async def test_postgres_session_really_is_encrypted(pki: TestPki, pg: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_dsn(pki, pg))
    try:
        row = await conn.fetchrow("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert row["ssl"] is True and row["version"].startswith("TLS")
    finally:
        await conn.close()


# -------------------------------------------------------------------------------- unknown CA


async def test_unknown_ca_is_refused_by_every_dependency(
    pki: TestPki, pg: int, redis: int, clickhouse: str, scylla: EmulatorServer
) -> None:
    other = pki.other_ca
    d = deps(
        pki,
        scylla=f"127.0.0.1:{scylla.port}",
        source_tls=f'enabled = true\nca_file = "{other}"\n{client(pki)}',
    )
    msg = await failure(d, "scylla")
    assert msg.startswith(f"cannot connect to Scylla at 127.0.0.1:{scylla.port}: ") and NOT_TRUSTED in msg, (
        msg
    )

    d = deps(pki, redis=f"rediss://127.0.0.1:{redis}/0", state_tls=f'ca_file = "{other}"\n{client(pki)}')
    msg = await failure(d, "redis")
    assert f"cannot connect to Redis at 127.0.0.1:{redis} db 0 (TLS): " in msg and NOT_TRUSTED in msg, msg

    d = deps(pki, pg=pg_dsn(pki, pg, ca=other))
    msg = await failure(d, "pg")
    assert f"127.0.0.1:{pg}" in msg and "PostgreSQL" in msg and NOT_TRUSTED in msg, msg

    d = deps(pki, ch=clickhouse, ch_tls=f'ca_file = "{other}"\n{client(pki)}')
    msg = await failure(d, "ch")
    assert f"ClickHouse at {clickhouse}" in msg and NOT_TRUSTED in msg, msg


# ----------------------------------------------------------------------------- wrong host name


async def test_certificate_for_another_host_is_refused(pki: TestPki, pg_wrong_host: int) -> None:
    with EmulatorServer("127.0.0.1", 0, vnodes=4, shards=2, tls=tls_context(*pki.cert("wrong-host"))) as s:
        d = deps(pki, scylla=f"127.0.0.1:{s.port}", source_tls=f'enabled = true\nca_file = "{pki.ca}"')
        msg = await failure(d, "scylla")
        assert WRONG_HOST in msg, msg
    with redis_tls(pki, cert="wrong-host") as port:
        d = deps(pki, redis=f"rediss://127.0.0.1:{port}/0", state_tls=f'ca_file = "{pki.ca}"\n{client(pki)}')
        msg = await failure(d, "redis")
        assert "Redis at" in msg and WRONG_HOST in msg, msg
    d = deps(pki, pg=pg_dsn(pki, pg_wrong_host))
    msg = await failure(d, "pg")
    assert "PostgreSQL" in msg and WRONG_HOST in msg, msg
    with clickhouse_tls(pki, cert="wrong-host") as url:
        d = deps(pki, ch=url, ch_tls=f'ca_file = "{pki.ca}"\n{client(pki)}')
        msg = await failure(d, "ch")
        assert "ClickHouse at" in msg and WRONG_HOST in msg, msg


async def test_host_name_is_checked_against_localhost_too(
    pki: TestPki, pg: int, scylla: EmulatorServer
) -> None:
    """The certificate names ``localhost`` as well: dialing that name works (names, not only IPs)."""
    await connect(deps(pki, pg=pg_dsn(pki, pg, host="localhost")), "pg")


# --------------------------------------------------------------------- no client certificate


def asks_for_client_certificate(msg: str) -> bool:
    """With TLS 1.3 the server's "certificate required" alert reaches the client, or the server's
    close does first: either way the error tells the operator to give a client certificate."""
    return "client certificate" in msg and "cert_file" in msg and "key_file" in msg


async def test_missing_client_certificate_is_explained(
    pki: TestPki, pg: int, redis: int, clickhouse: str, scylla: EmulatorServer
) -> None:
    d = deps(pki, scylla=f"127.0.0.1:{scylla.port}", source_tls=f'enabled = true\nca_file = "{pki.ca}"')
    msg = await failure(d, "scylla")
    assert "Scylla at" in msg and asks_for_client_certificate(msg), msg
    d = deps(pki, redis=f"rediss://127.0.0.1:{redis}/0", state_tls=f'ca_file = "{pki.ca}"')
    msg = await failure(d, "redis")
    assert "Redis at" in msg and asks_for_client_certificate(msg), msg
    d = deps(pki, pg=pg_dsn(pki, pg, cert=False))
    msg = await failure(d, "pg")
    assert "PostgreSQL" in msg and "connection requires a valid client certificate" in msg, msg
    d = deps(pki, ch=clickhouse, ch_tls=f'ca_file = "{pki.ca}"')
    msg = await failure(d, "ch")
    assert "ClickHouse at" in msg and asks_for_client_certificate(msg), msg


# -------------------------------------------------------------- TLS configured, server plaintext


async def test_tls_configured_but_server_speaks_plaintext(
    pki: TestPki, pg_server_dsn: str, redis_url: str, clickhouse_url: str, emulator: Any
) -> None:
    """Never a silent plaintext fallback: each names the dependency and says TLS was not offered."""
    d = deps(pki, scylla=f"127.0.0.1:{emulator.port}", source_tls=f'enabled = true\nca_file = "{pki.ca}"')
    msg = await failure(d, "scylla")
    assert "Scylla at" in msg and NO_TLS in msg, msg

    plain_redis = redis_url.replace("redis://", "rediss://")
    d = deps(pki, redis=plain_redis, state_tls=f'ca_file = "{pki.ca}"')
    msg = await failure(d, "redis")
    assert "Redis at" in msg and NO_TLS in msg, msg

    port = int(pg_server_dsn.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    d = deps(pki, pg=pg_dsn(pki, port))
    msg = await failure(d, "pg")
    assert "PostgreSQL" in msg and NO_TLS in msg, msg

    d = deps(pki, ch=clickhouse_url.replace("http://", "https://"), ch_tls=f'ca_file = "{pki.ca}"')
    msg = await failure(d, "ch")
    assert "ClickHouse at" in msg and NO_TLS in msg, msg


async def test_tls_files_on_plaintext_urls_are_config_errors(pki: TestPki) -> None:
    from cdcd.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        deps(pki, state_tls=f'ca_file = "{pki.ca}"')
    assert "state.ca_file" in str(info.value) and "rediss://" in str(info.value)
    with pytest.raises(ConfigError) as info:
        deps(pki, ch="http://127.0.0.1:8123", ch_tls=client(pki))
    assert "destinations.ch.cert_file" in str(info.value) and "https://" in str(info.value)

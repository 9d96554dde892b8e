"""Live config reload: which changed keys are refused, which (table, destination) pairs start,
stop or restart; the fingerprint ignores per-replica settings; ``state.lease_ttl`` is checked."""

from __future__ import annotations

import pytest

from cdcd.app.reload import fingerprint, plan
from cdcd.config import Config, loads
from cdcd.errors import ConfigError

ENV = {"PG_DSN": "postgresql://u@127.0.0.1/db", "PG2_DSN": "postgresql://u@127.0.0.2/db"}


def cfg(extra: str = "", *, hosts: str = '["10.0.0.1"]', prefix: str = "cdcd", port: int = 8088,
        tables: str = "", batch: int = 1000, pg_dsn: str = "${PG_DSN}", state: str = "") -> Config:  # fmt: skip
    return loads(
        f"""
[source]
hosts = {hosts}
[state]
key_prefix = "{prefix}"
{state}
[http]
listen = "127.0.0.1:{port}"
[pipeline.batch]
max_rows = {batch}
[destinations.pg]
type = "postgres"
dsn = "{pg_dsn}"
{extra}
[[tables]]
source = "shop.orders"
destinations = ["pg"]
{tables}
""",
        env=ENV,
    )


def test_nothing_changed_means_no_changes() -> None:
    p = plan(cfg(), cfg())
    assert (p.changes, p.refused, p.added, p.removed, p.restart) == ([], [], set(), set(), set())


def test_non_live_keys_are_refused_by_name() -> None:
    p = plan(cfg(), cfg(hosts='["10.0.0.9"]', prefix="other"))
    assert p.refused == ["source.hosts", "state.key_prefix"]
    p = plan(cfg(), cfg(pg_dsn="${PG2_DSN}"))
    assert p.refused == ["destinations.pg.dsn"]
    p = plan(cfg(), cfg(port=9999))
    assert p.refused == ["http.listen"]


def test_added_table_and_destination_start_pairs_without_touching_the_others() -> None:
    extra = '[destinations.pg2]\ntype = "postgres"\ndsn = "${PG2_DSN}"\n'
    more = '[[tables]]\nsource = "shop.items"\ndestinations = ["pg", "pg2"]\n'
    p = plan(cfg(), cfg(extra, tables=more))
    assert p.refused == []
    assert p.added == {("shop.items", "pg"), ("shop.items", "pg2")}
    assert p.new_tables == ["shop.items"]
    assert p.destinations == {"pg2"}
    assert p.restart == set() and p.removed == set()
    back = plan(cfg(extra, tables=more), cfg())
    assert back.removed == {("shop.items", "pg"), ("shop.items", "pg2")}
    assert back.refused == []


def test_pipeline_settings_are_live_and_restart_every_pair() -> None:
    p = plan(cfg(), cfg(batch=50))
    assert p.refused == []
    assert p.changes == ["pipeline.batch.max_rows"]
    assert p.restart == {("shop.orders", "pg")}


def test_fingerprint_ignores_per_replica_settings_only() -> None:
    assert fingerprint(cfg()) == fingerprint(cfg(port=9000))
    assert fingerprint(cfg()) != fingerprint(cfg(batch=10))
    assert fingerprint(cfg()) != fingerprint(cfg(pg_dsn="${PG2_DSN}"))
    assert len(fingerprint(cfg())) == 16


def test_lease_ttl_is_checked() -> None:
    assert cfg().state.lease_ttl == 10.0
    with pytest.raises(ConfigError, match=r"state\.lease_ttl.*3s"):
        cfg(state='lease_ttl = "1s"')
    assert cfg(state='lease_ttl = "30s"').state.lease_ttl == 30.0

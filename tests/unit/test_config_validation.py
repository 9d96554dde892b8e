"""Config keys of dirty-data handling: [validation], on_invalid, ignore_columns, column rules and
type overrides, add_bookkeeping_columns (cdcd.config.model, cdcd.config.checks)."""

from __future__ import annotations

import pytest

from cdcd.config import loads
from cdcd.errors import ConfigError

ENV = {"PG_DSN": "postgresql://u@127.0.0.1/db"}
BASE = """
[validation]
alert_ratio = 0.1
max_entries = 500

[destinations.pg]
type = "postgres"
dsn = "${PG_DSN}"
add_bookkeeping_columns = false

[[tables]]
source = "shop.orders"
destinations = ["pg"]
on_invalid = "quarantine_key"
ignore_columns = ["note"]
"""


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, file="cdcd.toml", env=ENV)
    return str(info.value)


def test_keys_load() -> None:
    cfg = loads(
        BASE
        + '[tables.columns.amount]\nmin = 0\nmax = 10.5\nallowed = [1, 2]\ntypes = { pg = "numeric(12,2)" }\n'
        '[tables.columns.name]\nnot_null = true\nmax_length = 12\npattern = "[a-z]+"\n',
        env=ENV,
    )
    t = cfg.tables[0]
    assert (cfg.validation.alert_ratio, cfg.validation.max_entries) == (0.1, 500)
    assert cfg.destinations["pg"].add_bookkeeping_columns is False
    assert (t.on_invalid, t.ignore_columns) == ("quarantine_key", ["note"])
    assert t.columns["amount"].types == {"pg": "numeric(12,2)"} and t.columns["amount"].max == 10.5
    assert t.columns["name"].pattern == "[a-z]+" and t.columns["name"].not_null


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[tables.columns.name]\npattern = "[a-"\n',
            "tables[0].columns.name.pattern: not a regular expression",
        ),
        ("[tables.columns.qty]\nmin = 5\nmax = 1\n", "tables[0].columns.qty.min: min 5.0 is above max 1.0"),
        (
            '[tables.columns.amount]\ntypes = { ch = "Decimal(18, 2)" }\n',
            '"ch" is not a destination of shop.orders',
        ),
        ('[tables.columns.amount]\ntypes = { pg = "numeric; DROP TABLE x" }\n', "expected a column type"),
        ("[tables.columns.note]\nnot_null = true\n", "column note is in ignore_columns"),
    ],
)
def test_bad_rules_are_named(extra: str, message: str) -> None:
    assert message in error(BASE + extra)


def test_bad_values_are_named() -> None:
    assert "on_invalid" in error(BASE.replace('"quarantine_key"', '"drop"'))
    assert "alert_ratio" in error(BASE.replace("alert_ratio = 0.1", "alert_ratio = 2"))

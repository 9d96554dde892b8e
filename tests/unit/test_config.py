"""cdcd.toml: every malformed config gives a precise message (file, key path, expected, got)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

from cdcd.config import (
    ClickHouseDestination,
    Config,
    Duration,
    PostgresDestination,
    Secret,
    TimescaleDestination,
    load,
    loads,
    redacted,
)
from cdcd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "cdcd.toml.example"
EXAMPLE_ENV = {
    "PG_DSN": "postgresql://cdcd:pg-secret@127.0.0.1:5432/analytics",
    "TS_DSN": "postgresql://cdcd:ts-secret@127.0.0.1:5433/metrics",
    "CH_PASSWORD": "ch-secret",
    "CDCD_ADMIN_TOKEN": "admin-secret",
}
ENV = {"PG_DSN": "postgresql://u:hunter2@127.0.0.1/db", "TOKEN": "tok-123"}
BASE = """
[destinations.pg]
type = "postgres"
dsn = "${PG_DSN}"

[[tables]]
source = "shop.orders"
destinations = ["pg"]
"""


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        loads(text, file="cdcd.toml", env=ENV if env is None else env)
    return str(info.value)


# ------------------------------------------------------------------------------ the error table
TS = "[destinations.ts]\ntype = 'timescaledb'\ndsn = 'postgresql://h/db'\n"
HYPER = '[destinations.ts.hypertables."shop.orders"]\n'
CASES = [
    pytest.param(
        BASE + "bogus = 1\n",
        "tables[0].bogus: unknown key; expected one of: source, destinations,",
        id="unknown key in a table",
    ),
    pytest.param(
        "[source]\nhostz = ['a']\n" + BASE,
        "source.hostz: unknown key; expected one of: hosts,",
        id="unknown key in a section",
    ),
    pytest.param(
        "[sourc]\n" + BASE, "sourc: unknown key; expected one of: source, state, http,", id="unknown section"
    ),
    pytest.param(
        BASE.replace("dsn =", "pool = 3\ndsn ="),
        "destinations.pg.pool: unknown key; expected one of: create_tables,",
        id="unknown key in a destination",
    ),
    pytest.param(
        "[source]\nfetch_size = 'x'\n" + BASE,
        'source.fetch_size: expected an integer, got "x"',
        id="wrong type",
    ),
    pytest.param(
        "[source]\nfetch_size = 0\n" + BASE,
        "source.fetch_size: expected an integer >= 1, got 0",
        id="out of range",
    ),
    pytest.param(
        "[source]\nhosts = '127.0.0.1'\n" + BASE,
        'source.hosts: expected an array, got "127.0.0.1"',
        id="string for array",
    ),
    pytest.param(
        "[source]\nhosts = []\n" + BASE,
        "source.hosts: expected a non-empty array, got an empty array",
        id="empty hosts",
    ),
    pytest.param(
        "[source]\nhosts = ['a:99999']\n" + BASE,
        'source.hosts[0]: expected "host" or "host:port", got "a:99999"',
        id="bad port",
    ),
    pytest.param(
        "[source]\nhosts = ['a:9042', 'b:9043']\n" + BASE,
        "source.hosts: all hosts must use the same port, got [9042, 9043]",
        id="mixed ports",
    ),
    pytest.param(
        "[source]\nconfidence_window = '2x'\n" + BASE,
        'source.confidence_window: expected a duration such as "250ms", "2s", "1m30s", "24h", got "2x"',
        id="bad duration",
    ),
    pytest.param(
        "[source]\npoll_interval = 5\n" + BASE,
        'source.poll_interval: expected a duration string such as "2s" or "250ms", got 5',
        id="duration as number",
    ),
    pytest.param(
        "[source]\npoll_interval = '0'\n" + BASE,
        "source.poll_interval: expected a duration > 0",
        id="zero poll interval",
    ),
    pytest.param(
        "[source]\nwindow = '1m'\nmax_window = '30s'\n" + BASE,
        "source.max_window: expected a duration >= source.window (1m)",
        id="window order",
    ),
    pytest.param(
        "[source]\nconsistency = 'MOST'\n" + BASE,
        'source.consistency: expected one of "ANY", "ONE",',
        id="bad consistency",
    ),
    pytest.param(
        "[source]\nusername = 'u'\n" + BASE,
        "source.username: username and password must be given together",
        id="username without password",
    ),
    pytest.param(
        BASE.replace('["pg"]', '["pgg"]'),
        'tables[0].destinations[0]: unknown destination "pgg"; configured: pg',
        id="unknown destination",
    ),
    pytest.param(
        BASE.replace('["pg"]', '["pg", "pg"]'),
        'tables[0].destinations[1]: destination "pg" is listed twice',
        id="destination twice",
    ),
    pytest.param(
        BASE.replace('["pg"]', "[]"),
        "tables[0].destinations: expected a non-empty array, got an empty array",
        id="no destinations for a table",
    ),
    pytest.param(
        BASE.replace("PG_DSN", "NOT_SET_VAR"),
        "destinations.pg.dsn: environment variable NOT_SET_VAR is not set",
        id="missing env var",
    ),
    pytest.param(
        BASE.replace("${PG_DSN}", "${PG DSN}"),
        "destinations.pg.dsn: bad variable reference '${PG DSN}'",
        id="bad env reference",
    ),
    pytest.param(
        BASE + 'target = "an-alytics.orders"\n',
        'tables[0].target: expected "schema.table" (letters, digits, _; not starting with a digit), '
        'got "an-alytics.orders"',
        id="bad target identifier",
    ),
    pytest.param(
        BASE + 'target = "analytics.1orders"\n',
        'tables[0].target: expected "schema.table"',
        id="target starting with a digit",
    ),
    pytest.param(
        BASE + 'target = "orders"\n', 'tables[0].target: expected "schema.table"', id="target without schema"
    ),
    pytest.param(
        BASE.replace("shop.orders", "shoporders"),
        'tables[0].source: expected "keyspace.table" (letters, digits, _; at most 48 each), got "shoporders"',
        id="source without keyspace",
    ),
    pytest.param(
        BASE.replace("shop.orders", 'shop.or\\"ders'),
        'tables[0].source: expected "keyspace.table"',
        id="source with a quote",
    ),
    pytest.param(
        BASE + 'delete = "purge"\n',
        'tables[0].delete: expected one of "hard", "soft", "tombstone", got "purge"',
        id="bad delete strategy",
    ),
    pytest.param(
        BASE.replace('"postgres"', '"mysql"'),
        'destinations.pg.type: expected one of "postgres", "timescaledb", "clickhouse", got "mysql"',
        id="unknown destination type",
    ),
    pytest.param(
        BASE.replace('type = "postgres"', ""),
        "destinations.pg.type: required key is missing",
        id="destination without type",
    ),
    pytest.param(
        BASE.replace('dsn = "${PG_DSN}"', "pool_size = 'x'\ndsn = '${PG_DSN}'"),
        'destinations.pg.pool_size: expected an integer, got "x"',
        id="wrong type in a destination",
    ),
    pytest.param(
        BASE.replace('dsn = "${PG_DSN}"', ""),
        'destinations.pg.dsn: required: give dsn (e.g. "${VAR}") or dsn_file',
        id="missing dsn",
    ),
    pytest.param(
        BASE.replace("${PG_DSN}", "postgresql://u:pw@h/db"),
        "destinations.pg.dsn: the URL holds a password",
        id="literal password in a dsn",
    ),
    pytest.param(
        BASE + "[http]\nadmin_token = 'abc'\n",
        "http.admin_token: secrets must not be written in the config file",
        id="literal admin token",
    ),
    pytest.param(
        BASE + "[http]\nlisten = '8088'\n", 'http.listen: expected "host:port", got "8088"', id="bad listen"
    ),
    pytest.param(
        BASE + "[state]\nredis_url = 'http://x'\n",
        'state.redis_url: expected a redis://, rediss:// or unix:// URL, got "http:"',
        id="bad redis url",
    ),
    pytest.param(
        BASE + "[state]\nkey_prefix = 'a b'\n",
        "state.key_prefix: expected letters, digits and _ . - : { }",
        id="bad key prefix",
    ),
    pytest.param(
        BASE + "[state]\ncheckpoint_every = -1\n",
        "state.checkpoint_every: expected an integer >= 1, got -1",
        id="negative checkpoint_every",
    ),
    pytest.param(
        BASE + "[destinations.ch]\ntype = 'clickhouse'\nurl = 'ftp://x'\n",
        'destinations.ch.url: expected an http:// or https:// URL, got "ftp://x"',
        id="bad clickhouse url",
    ),
    pytest.param(
        BASE + '[destinations."p g"]\ntype = "clickhouse"\n',
        'destinations."p g": destination names may hold letters, digits',
        id="bad destination name",
    ),
    pytest.param(
        BASE + '[[tables]]\nsource = "shop.orders"\ndestinations = ["pg"]\n',
        "tables[1].source: shop.orders is already configured in tables[0]",
        id="duplicate table",
    ),
    pytest.param(
        BASE + '[[tables]]\nsource = "shop.items"\ndestinations = ["pg"]\ntarget = "shop.orders"\n',
        "tables[1].target: shop.orders in destination pg is already the target of tables[0]",
        id="duplicate target",
    ),
    pytest.param(
        '[destinations.pg]\ntype = "postgres"\ndsn = "${PG_DSN}"\n',
        "tables: required key is missing",
        id="no tables",
    ),
    pytest.param(
        "tables = []\n" + BASE.split("[[tables]]", maxsplit=1)[0],
        "tables: expected a non-empty array, got an empty array",
        id="empty tables",
    ),
    pytest.param(
        BASE.split("[destinations.pg]")[1].split("\n", 3)[3],
        "destinations: required key is missing",
        id="no destinations",
    ),
    pytest.param(
        BASE + TS + HYPER + "time_column = 'ts'\n",
        'destinations.ts.hypertables."shop.orders": no [[tables]] entry sends shop.orders to destination ts',
        id="hypertable for an unrouted table",
    ),
    pytest.param(
        BASE + TS + HYPER + "time_column = '1ts'\n",
        'destinations.ts.hypertables."shop.orders".time_column: expected an identifier',
        id="bad hypertable column",
    ),
    pytest.param(
        BASE + "[pipeline.retry]\nmultiplier = 0.5\n",
        "pipeline.retry.multiplier: expected a number >= 1.0, got 0.5",
        id="bad multiplier",
    ),
    pytest.param(
        BASE + "[tracing]\nsample_ratio = 2.0\n",
        "tracing.sample_ratio: expected a number <= 1.0, got 2.0",
        id="ratio above 1",
    ),
    pytest.param(
        BASE + "[logging]\nlevel = 'loud'\n",
        'logging.level: expected one of "debug", "info", "warning", "error", got "loud"',
        id="bad log level",
    ),
    pytest.param(
        BASE + "[instance]\nreplica = 'a b'\n",
        "instance.replica: expected letters, digits, '_', '.' or '-'",
        id="bad replica name",
    ),
    pytest.param(
        BASE + "[source.tls]\ncert_file = 'x'\n", "source.tls.cert_file: file ", id="missing tls file"
    ),
    pytest.param(BASE + "x = [\n", "cdcd.toml: not valid TOML: ", id="toml syntax"),
    pytest.param(
        BASE + "staleness = 'version'\n",
        'tables[0].version_column: staleness = "version" needs version_column = "<a column of shop.orders>"',
        id="version strategy without its column",
    ),
    pytest.param(
        BASE + "version_column = 'rev'\n",
        'tables[0].version_column: is only used with staleness = "version" or "hybrid"',
        id="version column with the timestamp strategy",
    ),
    pytest.param(
        BASE + "staleness = 'newest'\n",
        'tables[0].staleness: expected one of "timestamp", "version", "hybrid", got "newest"',
        id="unknown staleness strategy",
    ),
    pytest.param(
        BASE + "staleness = 'hybrid'\nversion_column = 'rev'\n[tables.masking]\nrev = 'redact'\n",
        'tables[0].version_column: "rev" is masked: its masked values cannot order versions',
        id="masked version column",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_malformed_config_names_the_key(text: str, expected: str) -> None:
    message = error(text)
    assert message.startswith("cdcd.toml: "), message
    assert expected in message, message


def test_error_carries_file_and_key_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        loads(BASE + 'delete = "purge"\n', file="/etc/cdcd/cdcd.toml", env=ENV)
    assert info.value.file == "/etc/cdcd/cdcd.toml"
    assert info.value.key == "tables[0].delete"
    assert "purge" in info.value.detail


def test_toml_syntax_error_gives_line_and_column() -> None:
    message = error('[source]\nhosts = ["a",\nfetch_size = 3\n' + BASE)
    assert re.search(r"line \d+, column \d+", message), message


def test_values_from_the_environment_never_appear_in_errors() -> None:
    env = {**ENV, "DELETE": "super-secret-value"}
    message = error(BASE + 'delete = "${DELETE}"\n', env)
    assert "tables[0].delete" in message
    assert "super-secret-value" not in message
    message = error(BASE + "[source]\nfetch_size = '${DELETE}'\n", env)
    assert "super-secret-value" not in message and "source.fetch_size" in message
    message = error(BASE + "[source]\nwindow = '${DELETE}'\n", env)
    assert "super-secret-value" not in message and "source.window" in message


def test_empty_secret_from_the_environment() -> None:
    message = error(BASE, {"PG_DSN": ""})
    assert (
        message
        == "cdcd.toml: destinations.pg.dsn: is empty (is the environment variable set to an empty string?)"
    )


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load("/nonexistent/cdcd.toml", env=ENV)
    assert str(info.value).startswith("/nonexistent/cdcd.toml: cannot read the config file")


# ------------------------------------------------------------------------------------ good input
def test_minimal_config_gets_documented_defaults() -> None:
    cfg = loads(BASE, env=ENV)
    assert cfg.source.hosts == ["127.0.0.1:9042"]
    assert cfg.source.confidence_window == 2.0
    assert cfg.source.poll_interval == 0.25
    assert cfg.state.redis_url.get() == "redis://127.0.0.1:6379/0"
    assert cfg.state.checkpoint_interval == 10.0
    assert cfg.state.checkpoint_every == 1000
    assert cfg.http.listen == "127.0.0.1:8088"
    assert cfg.http.admin_token is None
    assert cfg.instance.replica  # the host name
    table = cfg.tables[0]
    assert (table.source, table.delete, table.target_schema, table.target_table) == (
        "shop.orders",
        "hard",
        "shop",
        "orders",
    )
    dest = cfg.destinations["pg"]
    assert isinstance(dest, PostgresDestination) and dest.kind == "postgres"
    assert dest.dsn is not None and dest.dsn.get() == ENV["PG_DSN"]


def test_env_substitution_default_and_escape() -> None:
    cfg = loads(
        BASE + "[source]\nhosts = ['${SCYLLA_HOST:-10.0.0.1}:9042']\nlocal_dc = 'dc$$1'\n"
        "[instance]\nreplica = 'r-${N}'\n",
        env={**ENV, "N": "7"},
    )
    assert cfg.source.hosts == ["10.0.0.1:9042"]
    assert cfg.source.local_dc == "dc$1"
    assert cfg.instance.replica == "r-7"


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-token\n")
    (tmp_path / "dsn").write_text("postgresql://u:from-file@h/db\n")
    text = BASE.replace('dsn = "${PG_DSN}"', 'dsn_file = "dsn"') + '[http]\nadmin_token_file = "token"\n'
    (tmp_path / "cdcd.toml").write_text(text)
    cfg = load(tmp_path / "cdcd.toml", env={})
    assert cfg.http.admin_token == Secret("file-token")
    dest = cfg.destinations["pg"]
    assert isinstance(dest, PostgresDestination) and dest.dsn == Secret("postgresql://u:from-file@h/db")
    assert dest.dsn_file == str(tmp_path / "dsn")


def test_secret_and_secret_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    message = error(BASE + f'[http]\nadmin_token = "${{TOKEN}}"\nadmin_token_file = "{tmp_path / "token"}"\n')
    assert "http.admin_token_file: give either admin_token or admin_token_file, not both" in message


def test_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    message = error(BASE + f'[http]\nadmin_token_file = "{tmp_path / "token"}"\n')
    assert "http.admin_token_file: file" in message and "is empty" in message


def test_secrets_are_never_shown() -> None:
    cfg = loads(BASE + '[http]\nadmin_token = "${TOKEN}"\n', env=ENV)
    for text in (repr(cfg), str(cfg), repr(redacted(cfg)), msgspec.json.encode(redacted(cfg)).decode()):
        assert "hunter2" not in text and "tok-123" not in text
    assert redacted(cfg)["http"]["admin_token"] == "***"
    assert redacted(cfg)["source"]["confidence_window"] == "2s"


def test_tagged_destinations_and_batch_overrides() -> None:
    text = BASE + (
        '[destinations.ch]\ntype = "clickhouse"\npassword = "${TOKEN}"\nbatch_max_rows = 50\n'
        '[destinations.ts]\ntype = "timescaledb"\ndsn = "postgresql://h/db"\nbatch_max_wait = "2s"\n'
        '[destinations.ts.hypertables."shop.events"]\ntime_column = "at"\nretention = "30d"\n'
        '[[tables]]\nsource = "shop.events"\ndestinations = ["ts", "ch"]\ndelete = "tombstone"\n'
        'target = "metrics.events"\n'
    )
    cfg = loads(text, env=ENV)
    ch, ts = cfg.destinations["ch"], cfg.destinations["ts"]
    assert isinstance(ch, ClickHouseDestination) and ch.password == Secret("tok-123")
    assert isinstance(ts, TimescaleDestination) and ts.kind == "timescaledb"
    assert ts.hypertables["shop.events"].time_column == "at"
    assert ts.hypertables["shop.events"].retention == 30 * 86400
    batch = cfg.pipeline.batch
    assert (ch.batch(batch).max_rows, ch.batch(batch).max_wait) == (50, 0.5)
    assert (ts.batch(batch).max_rows, ts.batch(batch).max_wait) == (1000, 2.0)
    assert cfg.tables[1].target_schema == "metrics" and cfg.tables[1].delete == "tombstone"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("2s", 2), ("1m30s", 90), ("24h", 86400), ("7d", 604800), ("0", 0), ("1.5s", 1.5)],
)
def test_duration_forms(text: str, seconds: float) -> None:
    assert Duration.parse(text) == seconds


@pytest.mark.parametrize("text", ["", "2", "s", "2sec", "-1s", "1m 30s", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        Duration.parse(text)


# -------------------------------------------------------------------------------------- example
def test_example_loads() -> None:
    cfg = load(EXAMPLE, env=EXAMPLE_ENV)
    assert set(cfg.destinations) == {"pg", "ts", "ch"}
    assert [t.source for t in cfg.tables] == ["shop.orders", "shop.events"]
    assert cfg.http.admin_token == Secret("admin-secret")


def _option_names(tp: object, seen: set[type]) -> set[str]:
    names: set[str] = set()
    for arg in (tp, *typing.get_args(tp)):
        if isinstance(arg, type) and issubclass(arg, msgspec.Struct) and arg not in seen:
            seen.add(arg)
            for f in msgspec.structs.fields(arg):
                names.add(f.encode_name)
                names |= _option_names(f.type, seen)
        elif typing.get_args(arg) and arg is not tp:
            names |= _option_names(arg, seen)
    return names


def test_example_documents_every_option() -> None:
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#? ?([a-z_]+) = ", text, re.M))
    for header in re.findall(r"^\[+(.*?)\]+$", text, re.M):
        documented |= set(re.findall(r"[a-z_]+", header))
    documented |= set(re.findall(r"^#\s+([a-z_]+)\s{2,}", text, re.M))  # the shared destination options
    missing = _option_names(Config, set()) - documented
    assert not missing, f"options missing from cdcd.toml.example: {sorted(missing)}"

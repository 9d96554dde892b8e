"""Masking, pure parts: the canonical text per CQL type, each strategy's exact output, what an
event has masked (keys, values, images, set elements, UDT fields, map values, range bounds),
the masked schema the destinations are built from, and the config checks of ``[masking]``."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdcd.config import loads
from cdcd.errors import ConfigError
from cdcd.events import ChangeEvent, CqlDuration, Op, Position, RangeBound
from cdcd.masking.canonical import canonical_text
from cdcd.masking.plan import ColumnRule, TablePlan, masked_schema
from cdcd.masking.stage import MaskStage
from cdcd.masking.vault import TokenVault
from cdcd.schema import Column, CqlType, TableSchema, UdtDef

KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
KEY = bytes.fromhex(KEY_HEX)
VAULT_HEX = "ff" * 32


def expected_hash(text: str) -> str:
    return "hash_" + hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------ canonical text
@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("Alice@Example.com ", "Alice@Example.com "),
        (-42, "-42"),
        (10**30, "1000000000000000000000000000000"),
        (True, "true"),
        (False, "false"),
        (0.1, "0.1"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Infinity"),
        (decimal.Decimal("1.10"), "1.10"),
        (decimal.Decimal("1E+3"), "1000"),
        (uuid.UUID("123E4567-E89B-12D3-A456-426614174000"), "123e4567-e89b-12d3-a456-426614174000"),
        (dt.datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=dt.UTC), "2026-01-31T12:00:00.123Z"),
        (
            dt.datetime(2026, 1, 31, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "2026-01-31T12:00:00.000Z",
        ),
        (dt.datetime(33, 1, 2, tzinfo=dt.UTC), "0033-01-02T00:00:00.000Z"),
        (dt.date(2026, 2, 3), "2026-02-03"),
        (b"\x00\xff\x10", "00ff10"),
        (CqlDuration(1, 2, 3000), "1mo2d3000ns"),
    ],
)
def test_canonical_text_per_type(value: object, text: str) -> None:
    assert canonical_text(value) == text


def test_canonical_text_refuses_collections() -> None:
    with pytest.raises(TypeError):
        canonical_text([1, 2])


@given(st.integers())
def test_integers_are_decimal(n: int) -> None:
    assert int(canonical_text(n)) == n


@given(st.uuids())
def test_uuids_lowercase_hyphenated(u: uuid.UUID) -> None:
    text = canonical_text(u)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text)
    assert uuid.UUID(text) == u


@given(st.datetimes(timezones=st.just(dt.UTC)))
def test_timestamps_rfc3339_ms(t: dt.datetime) -> None:
    text = canonical_text(t)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
    assert dt.datetime.fromisoformat(text.replace("Z", "+00:00")) == t.replace(
        microsecond=t.microsecond // 1000 * 1000
    )


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip(f: float) -> None:
    assert float(canonical_text(f)) == f


@given(st.binary())
def test_blobs_lowercase_hex(b: bytes) -> None:
    assert canonical_text(b) == b.hex()


# ---------------------------------------------------------------------------------- strategies
class FakeTokens:
    """Collects tokenize calls (the real vault is tested on PostgreSQL)."""

    def __init__(self) -> None:
        self.vault = TokenVault("postgresql://unused/db", bytes.fromhex(VAULT_HEX))

    def __call__(self, text: str, cls: str) -> str:
        return self.vault.token(text, cls)


def plan(columns: dict[str, ColumnRule], fields: dict[str, dict[str, ColumnRule]] | None = None,
         rules: list[tuple[str, ColumnRule]] | None = None, tokens: FakeTokens | None = None) -> TablePlan:  # fmt: skip
    return TablePlan(
        "ks.t",
        columns=columns,
        fields=fields or {},
        rules=[(re.compile(p), r) for p, r in (rules or [])],
        hash_key=KEY,
        tokenize=tokens or FakeTokens(),
    )


@given(st.text())
def test_hash_is_hmac_of_the_canonical_text(text: str) -> None:
    m = plan({"c": ColumnRule(strategy="hash")}).masker("c")
    assert m is not None
    assert m.mask(text) == expected_hash(text)


@given(st.text(), st.text())
def test_tokens_are_deterministic_and_distinct(a: str, b: str) -> None:
    tokens = FakeTokens()
    m = plan({"c": ColumnRule(strategy="tokenize", cls="phi")}, tokens=tokens).masker("c")
    assert m is not None
    ta, tb = m.mask(a), m.mask(b)
    assert ta == m.mask(a) and re.fullmatch(r"tok_[0-9a-f]{32}", ta)
    assert (ta == tb) == (a == b)
    assert tokens.vault._pending[ta] == (a, "phi")


@given(st.text(), st.integers(min_value=1, max_value=10))
def test_keep_last(text: str, keep: int) -> None:
    m = plan({"c": ColumnRule(strategy="keep_last", keep=keep)}).masker("c")
    assert m is not None
    out = m.mask(text)
    cut = max(0, len(text) - keep)
    assert out == "*" * cut + text[cut:]


def test_redact_and_passthrough() -> None:
    p = plan({
        "r": ColumnRule(strategy="redact"),
        "n": ColumnRule(strategy="redact", null=True),
        "v": ColumnRule(strategy="redact", value="xx"),
        "p": ColumnRule(strategy="passthrough", cls="phi"),
    })  # fmt: skip
    assert p.masker("r").mask("secret") == "[REDACTED]"  # type: ignore[union-attr]
    assert p.masker("n").mask("secret") is None  # type: ignore[union-attr]
    assert p.masker("v").mask(5) == "xx"  # type: ignore[union-attr]
    assert p.masker("p").mask(b"\x01") == b"\x01"  # type: ignore[union-attr]
    assert p.counts == {("pii", "redact"): 3, ("phi", "passthrough"): 1}


def test_table_entries_win_over_rules_and_rules_match_new_columns() -> None:
    rule = ColumnRule(strategy="hash", origin="masking.rules[0]")
    p = plan({"email": ColumnRule(strategy="redact")}, rules=[("(?i)^(e_?mail|ssn|phone)$", rule)])
    assert p.masker("email").rule.strategy == "redact"  # type: ignore[union-attr]
    assert p.masker("E_Mail").rule is rule  # type: ignore[union-attr]
    assert p.masker("name") is None


# ------------------------------------------------------------------------------------- events
POS = Position(generation=1, stream_id=b"\x01" * 16, time=uuid.uuid1())


def event(**kw: object) -> ChangeEvent:
    base: dict[str, object] = {"table": "ks.t", "pos": POS, "batch_seq": 0, "op": Op.UPDATE,
                               "write_time_us": 1, "key": {"id": 1}}  # fmt: skip
    base.update(kw)
    return ChangeEvent(**base)  # type: ignore[arg-type]


def test_event_everywhere_masked() -> None:
    tokens = FakeTokens()
    p = plan(
        {"email": ColumnRule(strategy="hash"), "tags": ColumnRule(strategy="hash"),
         "mrn": ColumnRule(strategy="tokenize"), "attrs": ColumnRule(strategy="hash")},
        fields={"address": {"street": ColumnRule(strategy="redact")}, "prefs": {"phone": ColumnRule(strategy="hash")}},
        tokens=tokens,
    )  # fmt: skip
    stage = MaskStage(p, set_columns=frozenset({"tags"}), clustering=["email"])
    e = event(
        key={"id": 1, "email": "a@x.org"},
        values={"name": "Ann", "tags": ["t1"], "mrn": "MRN-1", "address": {"street": "Elm", "zip": "1"},
                "prefs": {"phone": "555", "lang": "en"}, "attrs": {"k": "v"}},
        deleted_elements={"tags": ["t0"], "attrs": ["k2"]},
        preimage={"email": "old@x.org", "name": "Ann"},
        postimage={"email": "a@x.org", "mrn": "MRN-1"},
    )  # fmt: skip
    out = stage.process([e])
    assert not out.rejected
    m = out.passed[0]
    assert m.key == {"id": 1, "email": expected_hash("a@x.org")}
    assert m.values["name"] == "Ann"
    assert m.values["tags"] == [expected_hash("t1")]
    assert m.values["mrn"] == tokens.vault.token("MRN-1", "pii")
    assert m.values["address"] == {"street": "[REDACTED]", "zip": "1"}
    assert m.values["prefs"] == {"phone": expected_hash("555"), "lang": "en"}
    assert m.values["attrs"] == {"k": expected_hash("v")}  # map keys stay, values masked
    assert m.deleted_elements == {"tags": [expected_hash("t0")], "attrs": ["k2"]}
    assert m.preimage == {"email": expected_hash("old@x.org"), "name": "Ann"}
    assert m.postimage == {"email": expected_hash("a@x.org"), "mrn": m.values["mrn"]}
    assert "a@x.org" not in repr(m) and "MRN-1" not in repr(m) and "Elm" not in repr(m)


def test_range_delete_on_a_masked_clustering_column_is_rejected_masked() -> None:
    p = plan({"email": ColumnRule(strategy="hash")})
    stage = MaskStage(p, clustering=["email"])
    r = RangeBound(start=("a@x.org",), start_inclusive=True, end=(), end_inclusive=False)
    out = stage.process([event(op=Op.RANGE_DELETE, range=r), event(op=Op.RANGE_DELETE,
                         range=RangeBound(start=(), start_inclusive=True, end=(), end_inclusive=True))])  # fmt: skip
    assert len(out.passed) == 1 and len(out.rejected) == 1
    rej = out.rejected[0]
    assert rej.stage == "mask" and "masked clustering column" in rej.reason
    assert rej.event.range is not None and rej.event.range.start == (expected_hash("a@x.org"),)


def test_masked_schema_makes_masked_columns_text() -> None:
    udt = UdtDef("ks", "addr", ("street", "zip"), (CqlType("text"), CqlType("int")))
    schema = TableSchema(
        "ks", "t",
        (Column("id", CqlType("uuid"), "partition_key"), Column("ssn", CqlType("int"), "regular"),
         Column("tags", CqlType("set", (CqlType("int"),)), "regular"),
         Column("address", CqlType("udt", udt=udt), "regular"), Column("notes", CqlType("blob"), "regular"),
         Column("age", CqlType("int"), "regular")),
    )  # fmt: skip
    p = plan(
        {"id": ColumnRule(strategy="hash"), "ssn": ColumnRule(strategy="keep_last"),
         "tags": ColumnRule(strategy="hash"), "notes": ColumnRule(strategy="passthrough")},
        fields={"address": {"zip": ColumnRule(strategy="redact")}},
    )  # fmt: skip
    out = {c.name: c.type for c in masked_schema(schema, p).columns}
    assert out["id"] == CqlType("text") and out["ssn"] == CqlType("text")
    assert out["tags"] == CqlType("set", (CqlType("text"),))
    assert out["address"].udt is not None and out["address"].udt.field_types == (
        CqlType("text"),
        CqlType("text"),
    )
    assert out["notes"] == CqlType("blob") and out["age"] == CqlType("int")
    bad = plan({"id": ColumnRule(strategy="redact", origin="tables[0].masking.id")})
    problems = bad.check_keys(schema, lambda c: c)
    assert problems and problems[0][0] == "tables[0].masking.id" and "primary key" in problems[0][1]


# ------------------------------------------------------------------------------------- config
BASE = """
[destinations.pg]
type = "postgres"
dsn = "${PG_DSN}"

[[tables]]
source = "clinic.patients"
destinations = ["pg"]
"""
ENV = {"PG_DSN": "postgresql://u@127.0.0.1/db", "CDCD_HASH_KEY": KEY_HEX, "CDCD_VAULT_KEY": VAULT_HEX,
       "CDCD_VAULT_DSN": "postgresql://u@127.0.0.1/vault"}  # fmt: skip


def test_the_issue_example_loads() -> None:
    cfg = loads(
        """
[masking]
hash_key = "${CDCD_HASH_KEY}"
vault_key = "${CDCD_VAULT_KEY}"
vault_dsn = "${CDCD_VAULT_DSN}"

[[masking.rules]]
pattern = "(?i)^(e_?mail|ssn|phone)$"
strategy = "hash"
class = "pii"
"""
        + BASE
        + """
[tables.masking]
email = "hash"
ssn = { strategy = "redact", class = "pii" }
mrn = { strategy = "tokenize", class = "phi" }
card = { strategy = "keep_last", keep = 4 }
notes = "passthrough"
""",
        env=ENV,
    )
    assert cfg.masking.hash_key is not None and cfg.masking.hash_key.get() == KEY_HEX
    assert cfg.tables[0].masking["mrn"].class_ == "phi"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "table", "key", "text"),
    [
        ('hash_key = "${CDCD_HASH_KEY}"\n', 'email = "hash"', None, None),
        ('hash_key = "' + KEY_HEX + '"\n', 'email = "hash"', "masking.hash_key", "must not be written in the config file"),
        ('hash_key = "${SHORT}"\n', 'email = "hash"', "masking.hash_key", "64 hex characters"),
        ("", 'email = "hash"', "tables[0].masking.email", "needs masking.hash_key"),
        ('vault_key = "${CDCD_VAULT_KEY}"\n', 'mrn = "tokenize"', "tables[0].masking.mrn", "needs masking.vault_dsn"),
        ('hash_key = "${CDCD_HASH_KEY}"\n', 'email = "scramble"', "tables[0].masking.email", None),
        ('hash_key = "${CDCD_HASH_KEY}"\n[[masking.rules]]\npattern = "(["\nstrategy = "hash"\n', 'x = "hash"',
         "masking.rules[0].pattern", "regular expression"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(extra: str, table: str, key: str | None, text: str | None) -> None:
    toml = "[masking]\n" + extra + BASE + "\n[tables.masking]\n" + table + "\n"
    env = {**ENV, "SHORT": "abcd"}
    if key is None:
        loads(toml, env=env)
        return
    with pytest.raises(ConfigError) as info:
        loads(toml, env=env)
    errors = getattr(info.value, "errors", [info.value])
    assert any(e.key == key and (text is None or text in e.detail) for e in errors), [str(e) for e in errors]


def test_hash_key_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "hash.key"
    path.write_text(KEY_HEX + "\n")
    cfg = loads(f'[masking]\nhash_key_file = "{path}"\n' + BASE, env=ENV)
    assert cfg.masking.hash_key is not None and cfg.masking.hash_key.get() == KEY_HEX


def test_start_up_refuses_a_key_column_masked_by_redact() -> None:
    from cdcd.masking.runtime import Masking

    cfg = loads("[masking]\n" + BASE + '\n[tables.masking]\nid = "redact"\nemail = "redact"\n', env=ENV)
    schema = TableSchema(
        "clinic", "patients",
        (Column("id", CqlType("int"), "partition_key"), Column("email", CqlType("text"), "regular")),
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        Masking(cfg).check({"clinic.patients": schema})
    assert info.value.key == "tables[0].masking.id" and "only hash or tokenize" in info.value.detail


def test_start_up_refuses_a_masked_hypertable_time_column() -> None:
    from cdcd.masking.runtime import Masking

    toml = (
        '[masking]\n[[masking.rules]]\npattern = "^seen_at$"\nstrategy = "redact"\n' + BASE
        + '[destinations.ts]\ntype = "timescaledb"\ndsn = "${PG_DSN}"\n'
        + '[destinations.ts.hypertables."clinic.patients"]\ntime_column = "seen_at"\n'
    )  # fmt: skip
    cfg = loads(toml.replace('destinations = ["pg"]', 'destinations = ["pg", "ts"]'), env=ENV)
    schema = TableSchema(
        "clinic", "patients",
        (Column("id", CqlType("int"), "partition_key"), Column("seen_at", CqlType("timestamp"), "regular")),
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        Masking(cfg).check({"clinic.patients": schema})
    assert info.value.key == 'destinations.ts.hypertables."clinic.patients".time_column'

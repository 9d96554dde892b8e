"""The validator stage against destination definitions (cdcd.stages.validate, cdcd.stages.targets)."""

from __future__ import annotations

import datetime as dt
import decimal
import time
import uuid

from cdcd.events import ChangeEvent, Op, Position
from cdcd.stages import Chain
from cdcd.stages.targets import ch_column, parse_pg_check, table_from_rows
from cdcd.stages.validate import ColumnRule, DropColumns, Invalid, Validator

POS = Position(generation=1, stream_id=b"\x01" * 16, time=uuid.uuid1())


def ev(op: Op = Op.UPDATE, key: int = 1, **values: object) -> ChangeEvent:
    return ChangeEvent(
        table="ks.t", pos=POS, batch_seq=0, op=op, write_time_us=1, key={"id": key}, values=values
    )


def pg(name: str, type_: str, base: str, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "name": name, "type": type_, "base": base, "notnull": False, "has_default": False,
        "max_length": None, "precision": None, "scale": None, "labels": None,
    }  # fmt: skip
    row.update(kw)
    return row


def pg_table() -> Validator:
    from cdcd.stages.targets import pg_column

    cols = [
        pg("id", "integer", "int4", notnull=True),
        pg("name", "character varying(5)", "varchar", max_length=5, notnull=True),
        pg("amount", "numeric(6,2)", "numeric", precision=6, scale=2),
        pg("qty", "smallint", "int2"),
        pg("doc", "jsonb", "jsonb"),
        pg("at", "timestamp with time zone", "timestamptz"),
        pg("ref", "uuid", "uuid"),
        pg("ip", "inet", "inet"),
        pg("status", "text", "text"),
    ]
    checks = [
        ("qty_positive", "CHECK ((qty >= 0))"),
        ("status_known", "CHECK ((status = ANY (ARRAY['new'::text, 'paid'::text])))"),
        ("weird", "CHECK ((qty > 0) OR (status IS NULL))"),
    ]
    target = table_from_rows("public.t", [pg_column(r) for r in cols], checks)
    assert target.unchecked == ("weird",)
    rules = {"name": ColumnRule(pattern="[a-z]*")}
    return Validator(target, rules, columns=[c["name"] for c in cols])  # type: ignore[misc]


def reasons(v: Validator, e: ChangeEvent) -> list[str]:
    return [rule for _, rule, _ in v.problems(e)]


def test_postgres_definition_is_enforced() -> None:
    v = pg_table()
    assert reasons(v, ev(name="abc", amount=decimal.Decimal("1234.5"), qty=3, status="paid")) == []
    assert reasons(v, ev(name="abcdef")) == ["max_length"]
    assert reasons(v, ev(name=None)) == ["not_null"]
    assert reasons(v, ev(name="a\x00")) == ["type", "pattern"]
    assert reasons(v, ev(amount=decimal.Decimal("1.234"))) == ["scale"]
    assert reasons(v, ev(amount=decimal.Decimal("12345.5"))) == ["precision"]
    assert reasons(v, ev(amount=decimal.Decimal("1.230"))) == []  # trailing zeros are not lost
    assert reasons(v, ev(qty=40000)) == ["range"]
    assert reasons(v, ev(qty=-1)) == ["check"]
    assert reasons(v, ev(status="lost")) == ["check"]
    assert reasons(v, ev(doc='{"a": 1')) == ["json"]
    assert reasons(v, ev(doc='{"a": [1, 2]}')) == []
    assert reasons(v, ev(at="yesterday")) == ["type"]
    assert reasons(v, ev(at="2026-01-31T12:00:00Z")) == []
    assert reasons(v, ev(ref="not-a-uuid")) == ["type"]
    assert reasons(v, ev(ip="10.0.0.300")) == ["type"]
    assert reasons(v, ev(ip="10.0.0.3")) == []
    assert reasons(v, ev(Op.ROW_DELETE)) == []  # deletes: only the key is checked
    assert reasons(v, ev(key=2**40)) == ["range"]


def test_stage_splits_a_batch_and_names_columns_and_rule() -> None:
    v = pg_table()
    good, bad = ev(name="ok"), ev(name="toolong", qty=-5)
    passed, rejected = Chain([v]).run([good, bad, good])
    assert list(passed) == [good, good]
    (r,) = rejected
    assert isinstance(r, Invalid)
    assert (r.event, r.columns, r.rule, r.stage) == (bad, ("name", "qty"), "max_length", "validate")
    assert "varying(5)" in r.reason and "qty_positive" in r.reason


def test_quarantine_holds_later_changes_of_a_refused_key() -> None:
    v = pg_table()
    q = Validator(v.target, quarantine=True, columns=list(v.target.columns))
    bad, later, other = ev(key=1, name="toolong"), ev(key=1, name="ok"), ev(key=2, name="ok")
    passed, rejected = Chain([q]).run([bad, later, other])
    assert list(passed) == [other]
    assert [r.rule for r in rejected] == ["max_length", "quarantine"]  # type: ignore[attr-defined]
    q.release({"id": 1})
    assert list(Chain([q]).run([later])[0]) == [later]


def test_clickhouse_types() -> None:
    cols = [
        ch_column("id", "UInt8"),
        ch_column("amount", "Decimal(9, 2)"),
        ch_column("code", "FixedString(3)"),
        ch_column("kind", "LowCardinality(String)"),
        ch_column("state", "Enum8('a' = 1, 'b\\'c' = 2)"),
        ch_column("day", "Nullable(Date)"),
        ch_column("at", "DateTime('UTC')"),
        ch_column("tags", "Array(String)"),
    ]
    assert [c.nullable for c in cols] == [False, False, False, False, False, True, False, True]
    assert ch_column("d", "Date32").date_range == (dt.date(1, 1, 1), dt.date(9999, 12, 31))
    v = Validator(table_from_rows("db.t", cols), columns=[c.name for c in cols])
    assert reasons(v, ev(key=300)) == ["range"]
    assert reasons(v, ev(amount=decimal.Decimal("0.125"))) == ["scale"]
    assert reasons(v, ev(code="abcd")) == ["max_length"]
    assert reasons(v, ev(code="äb")) == []  # 3 bytes
    assert reasons(v, ev(kind=None)) == ["not_null"]
    assert reasons(v, ev(state="b'c")) == []
    assert reasons(v, ev(state="z")) == ["allowed"]
    assert reasons(v, ev(day="1850-01-01")) == ["range"]  # Date: 1970..2149
    assert reasons(v, ev(tags=None)) == []  # a null collection is stored empty
    assert reasons(v, ev(day=None)) == []
    assert reasons(v, ev(at=dt.datetime(2300, 1, 1, tzinfo=dt.UTC))) == ["range"]


def test_config_rules() -> None:
    target = table_from_rows("db.t", [ch_column("id", "Int64"), ch_column("n", "Nullable(Int64)")])
    rules = {"n": ColumnRule(not_null=True, min=0, max=10, allowed=(1, 2, 3))}
    v = Validator(target, rules)
    assert reasons(v, ev(n=2)) == []
    assert reasons(v, ev(n=None)) == ["not_null"]
    assert reasons(v, ev(n=11)) == ["max", "allowed"]
    assert reasons(v, ev(n=-1)) == ["min", "allowed"]


def test_pg_check_parser() -> None:
    assert parse_pg_check("c", "CHECK (((price > (0)::numeric) AND (price < (1000)::numeric)))") is not None
    (c,) = parse_pg_check("c", "CHECK ((char_length((code)::text) <= 3))") or []
    assert (c.column, c.op, c.value, c.length) == ("code", "<=", decimal.Decimal(3), True)
    assert parse_pg_check("c", "CHECK ((a > b))") is None
    assert parse_pg_check("c", "CHECK ((lower(name) = name))") is None


def test_drop_columns() -> None:
    e = ev(name="x", secret="y")
    (out,), _ = Chain([DropColumns(["secret"])]).run([e])
    assert out.values == {"name": "x"}


def test_quarantine_refresh_releases_keys_no_longer_queued() -> None:
    from cdcd.stages.validate import key_text

    v = pg_table()
    q = Validator(
        v.target, quarantine=True, columns=list(v.target.columns), quarantined=[key_text({"id": 3})]
    )
    Chain([q]).run([ev(key=1, name="toolong")])
    q.refresh([key_text({"id": 3})], now=time.monotonic())
    assert q.held == {key_text({"id": 1}), key_text({"id": 3})}  # key 1 was held just now: kept
    q.refresh([], now=time.monotonic() + 120)  # its entry resolved, the grace past
    assert q.held == set()
    assert list(Chain([q]).run([ev(key=1, name="ok")])[0]) == [ev(key=1, name="ok")]

"""``cdcd.schema_watch`` pure parts: schema diffs, type fit, the destination's schema, stripping."""

from __future__ import annotations

import uuid

import pytest

from cdcd.events import ChangeEvent, Op, Position
from cdcd.schema import CdcOptions, Column, TableSchema, UdtDef, parse_cql_type
from cdcd.schema_watch.diff import destination_schema, diff, fits
from cdcd.schema_watch.gate import strip, touched


def schema(*cols: tuple[str, str], cdc: CdcOptions | None = None, udt: UdtDef | None = None) -> TableSchema:
    def lookup(name: str) -> UdtDef:
        assert udt is not None
        return udt

    out = [
        Column("pk", parse_cql_type("int"), "partition_key"),
        Column("ck", parse_cql_type("int"), "clustering"),
    ]
    out += [Column(n, parse_cql_type(t, lookup), "regular") for n, t in cols]
    return TableSchema("ks", "t", tuple(out), ("asc",), cdc or CdcOptions(enabled=True))


def kinds(a: TableSchema, b: TableSchema) -> list[str]:
    return [c.describe() for c in diff(a, b)]


def test_added_dropped_retyped_and_incompatible_columns() -> None:
    a = schema(("v", "int"), ("w", "bigint"), ("x", "int"))
    b = schema(("v", "int"), ("w", "int"), ("x", "text"), ("y", "frozen<list<int>>"))
    assert kinds(a, b) == [
        "column retyped w (bigint -> int)",
        "column incompatible x (int -> text)",
        "column added y (- -> frozen<list<int>>)",
    ]
    assert kinds(b, a) == [
        "column incompatible w (int -> bigint)",
        "column incompatible x (text -> int)",
        "column dropped y (frozen<list<int>> -> -)",
    ]
    assert diff(a, a) == []


def test_cdc_options_and_udt_changes() -> None:
    a = schema(("v", "int"))
    b = schema(("v", "int"), cdc=CdcOptions(enabled=True, postimage=True))
    c = schema(("v", "int"), cdc=CdcOptions(enabled=False))
    assert [ch.kind for ch in diff(a, b)] == ["cdc_options_changed"]
    assert [ch.kind for ch in diff(a, c)] == ["cdc_disabled"]
    u1 = UdtDef("ks", "ut", ("a",), (parse_cql_type("int"),))
    u2 = UdtDef("ks", "ut", ("a", "b"), (parse_cql_type("int"), parse_cql_type("text")))
    s1, s2 = schema(("u", "frozen<ut>"), udt=u1), schema(("u", "frozen<ut>"), udt=u2)
    assert [ch.describe() for ch in diff(s1, s2)] == ["udt changed u (ut(a) -> ut(a, b))"]


@pytest.mark.parametrize(
    ("new", "old", "ok"),
    [
        ("int", "bigint", True), ("bigint", "int", False), ("tinyint", "varint", True), ("float", "double", True),
        ("double", "float", False), ("ascii", "text", True), ("text", "ascii", False), ("int", "text", False),
        ("list<int>", "list<int>", True), ("list<int>", "list<bigint>", False),
    ],
)  # fmt: skip
def test_fits(new: str, old: str, ok: bool) -> None:
    assert fits(parse_cql_type(new), parse_cql_type(old)) is ok


def test_destination_schema_keeps_dropped_and_destination_types() -> None:
    dest = schema(("v", "int"), ("w", "bigint"), ("x", "int"))
    src = schema(("w", "int"), ("x", "text"), ("y", "text"))
    target, bad = destination_schema(dest, src)
    assert [(c.name, c.type.cql()) for c in target.columns] == [
        ("pk", "int"), ("ck", "int"), ("w", "bigint"), ("x", "int"), ("y", "text"), ("v", "int"),
    ]  # fmt: skip
    assert bad == {"x"}
    same, none = destination_schema(dest, dest)
    assert same == dest and not none


def test_strip_leaves_out_unknown_columns_everywhere() -> None:
    ev = ChangeEvent(
        table="ks.t", pos=Position(generation=0, stream_id=b"s" * 16, time=uuid.uuid1()), batch_seq=0,
        op=Op.UPDATE, write_time_us=1, key={"pk": 1, "ck": 2}, values={"v": 1, "w": 2},
        deleted=frozenset({"w", "v"}), deleted_elements={"w": [1]}, preimage={"pk": 1, "ck": 2, "w": 5},
    )  # fmt: skip
    assert touched(ev) == {"v", "w", "pk", "ck"}
    out = strip(ev, frozenset({"pk", "ck", "v"}))
    assert out.values == {"v": 1} and out.deleted == {"v"} and out.deleted_elements == {}
    assert out.preimage == {"pk": 1, "ck": 2} and out.key == ev.key


def test_config_keys_are_validated_with_clear_errors() -> None:
    from cdcd.config import loads
    from cdcd.errors import ConfigError

    base = '[destinations.pg]\ntype = "postgres"\ndsn = "postgresql://u@h/db"\n'
    table = '[[tables]]\nsource = "ks.t"\ndestinations = ["pg"]\n'
    cfg = loads(base + table, env={})
    assert cfg.tables[0].schema_changes == "propagate" and cfg.source.schema_check_interval == 30.0
    cfg = loads(
        '[source]\nschema_check_interval = "5s"\n' + base + table + 'schema_changes = "halt"\n', env={}
    )
    assert cfg.tables[0].schema_changes == "halt" and cfg.source.schema_check_interval == 5.0
    with pytest.raises(ConfigError) as info:
        loads(
            '[source]\nschema_check_interval = "2m"\n' + base + table + 'schema_changes = "stop"\n',
            file="c.toml",
            env={},
        )
    text = str(info.value) + "".join(str(e) for e in getattr(info.value, "errors", []))
    assert 'source: schema_check_interval must be between "1s" and "60s", got "2m"' in text
    assert 'tables[0].schema_changes: expected one of "propagate", "log", "halt", got "stop"' in text

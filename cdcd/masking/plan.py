"""Compiled masking: which column of a table gets which strategy, and the strategies themselves.

A ``TablePlan`` answers "how is column C of this table masked" for every column name, also
for columns added after start-up: a table's ``[tables.masking]`` entries win, then the first
``[[masking.rules]]`` pattern that matches the name; the answer is cached per name. A
``Masker`` masks one column's value of any shape: scalars get the strategy; lists, sets,
tuples and the values of maps (and of non-frozen list deltas) are masked element by element;
UDTs field by field. An entry ``col.field`` (``address.street``) masks one UDT field or one
map value (by its key) and leaves the rest of the column readable.

Strategies (every output but ``passthrough`` is text, so masked columns are text columns in
the destinations):

* ``hash``: ``"hash_" + hex(HMAC-SHA-256(hash_key, canonical text))``; keyed, irreversible,
  the same in every table and destination (joins keep working).
* ``tokenize``: ``"tok_..."`` from the token vault (``cdcd.masking.vault``); reversible only
  with the vault key (``cdcd vault reveal``).
* ``redact``: a fixed text (default ``[REDACTED]``) or null.
* ``keep_last``: all but the last ``keep`` characters of the canonical text become ``*``.
* ``passthrough``: copied as is (already encrypted upstream); still classified and counted.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import msgspec

from cdcd.masking.canonical import canonical_text
from cdcd.schema import Column, CqlType, TableSchema, UdtDef

__all__ = [
    "DETERMINISTIC",
    "STRATEGIES",
    "ColumnRule",
    "Masker",
    "Strategy",
    "TablePlan",
    "masked_schema",
]

Strategy = Literal["hash", "tokenize", "redact", "keep_last", "passthrough"]
STRATEGIES: tuple[Strategy, ...] = ("hash", "tokenize", "redact", "keep_last", "passthrough")
DETERMINISTIC = frozenset({"hash", "tokenize"})  # the only strategies allowed on key columns

TEXT = CqlType("text")


class ColumnRule(msgspec.Struct, frozen=True, kw_only=True):
    """One strategy with its options, and where it was configured (for error messages)."""

    strategy: Strategy
    cls: str = "pii"
    keep: int = 4
    value: str = "[REDACTED]"
    null: bool = False
    origin: str = ""  # config key path, e.g. "tables[0].masking.email" or "masking.rules[1]"


class Masker:
    """Masks one column's values. ``counts[(class, strategy)]`` counts masked scalars."""

    __slots__ = ("_scalar", "fields", "rule")

    def __init__(
        self,
        rule: ColumnRule | None,
        *,
        hash_key: bytes | None,
        tokenize: Callable[[str, str], str] | None,
        fields: Mapping[str, Masker] | None = None,
        counts: dict[tuple[str, str], int],
    ) -> None:
        self.rule = rule
        self.fields = dict(fields or {})
        self._scalar = _scalar_fn(rule, hash_key, tokenize, counts) if rule is not None else None

    def mask(self, value: Any) -> Any:
        """``value`` with every scalar in it masked (the field entries only, for a field masker)."""
        if value is None:
            return None
        if self._scalar is None:  # only fields / map values by key
            if isinstance(value, dict):
                return {k: (self.fields[k].mask(v) if k in self.fields else v) for k, v in value.items()}
            return value
        return self._deep(value)

    def _deep(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            return {k: self._deep(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._deep(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._deep(v) for v in value)
        assert self._scalar is not None
        return self._scalar(value)

    def mask_elements(self, elements: list[Any]) -> list[Any]:
        """Removed set elements (``deleted_elements``): masked like the set's elements."""
        if self._scalar is None:
            return elements
        return [self._deep(v) for v in elements]

    @property
    def whole(self) -> bool:
        """The column itself is masked (not only some of its fields)."""
        return self._scalar is not None

    @property
    def changes_type(self) -> bool:
        return self.rule is not None and self.rule.strategy != "passthrough"


def _scalar_fn(
    rule: ColumnRule,
    hash_key: bytes | None,
    tokenize: Callable[[str, str], str] | None,
    counts: dict[tuple[str, str], int],
) -> Callable[[Any], Any]:
    tally = (rule.cls, rule.strategy)
    counts.setdefault(tally, 0)

    def counted(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(v: Any) -> Any:
            counts[tally] += 1
            return fn(v)

        return run

    if rule.strategy == "hash":
        if hash_key is None:
            raise ValueError(f"{rule.origin}: strategy hash needs masking.hash_key")
        key = hash_key

        def hashed(v: Any) -> str:
            return "hash_" + hmac.new(key, canonical_text(v).encode(), hashlib.sha256).hexdigest()

        return counted(hashed)
    if rule.strategy == "tokenize":
        if tokenize is None:
            raise ValueError(f"{rule.origin}: strategy tokenize needs masking.vault_key and vault_dsn")
        tok, cls = tokenize, rule.cls
        return counted(lambda v: tok(canonical_text(v), cls))
    if rule.strategy == "redact":
        fixed = None if rule.null else rule.value
        return counted(lambda v: fixed)
    if rule.strategy == "keep_last":
        keep = rule.keep

        def last(v: Any) -> str:
            text = canonical_text(v)
            cut = max(0, len(text) - keep)
            return "*" * cut + text[cut:]

        return counted(last)
    return counted(lambda v: v)  # passthrough


class TablePlan:
    """How one source table is masked. ``masker(name)`` is None for columns left readable."""

    def __init__(
        self,
        table: str,
        *,
        columns: Mapping[str, ColumnRule],
        fields: Mapping[str, Mapping[str, ColumnRule]],
        rules: Iterable[tuple[re.Pattern[str], ColumnRule]],
        hash_key: bytes | None,
        tokenize: Callable[[str, str], str] | None,
    ) -> None:
        self.table = table
        self.counts: dict[tuple[str, str], int] = {}
        self._hash_key = hash_key
        self._tokenize = tokenize
        self._columns = dict(columns)
        self._fields = {c: dict(f) for c, f in fields.items()}
        self._rules = list(rules)
        self._cache: dict[str, Masker | None] = {}
        for name in {*self._columns, *self._fields}:  # build now: a bad entry fails at start-up
            self.masker(name)

    @property
    def empty(self) -> bool:
        """Nothing can ever be masked in this table: no entries and no rules."""
        return not self._columns and not self._fields and not self._rules

    def masker(self, name: str) -> Masker | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        rule = self._columns.get(name)
        if rule is None and name not in self._fields:
            rule = next((r for p, r in self._rules if p.search(name)), None)
        fields = {
            f: Masker(r, hash_key=self._hash_key, tokenize=self._tokenize, counts=self.counts)
            for f, r in self._fields.get(name, {}).items()
        }
        m = (
            None
            if rule is None and not fields
            else Masker(
                rule, hash_key=self._hash_key, tokenize=self._tokenize, fields=fields, counts=self.counts
            )
        )
        self._cache[name] = m
        return m

    def check_keys(self, schema: TableSchema, where: Callable[[str], str]) -> list[tuple[str, str]]:
        """Problems (config key, message) of key columns masked other than deterministically."""
        out = []
        for c in schema.primary_key:
            m = self.masker(c.name)
            if m is None:
                continue
            rule = m.rule or next(iter(m.fields.values())).rule
            assert rule is not None
            if rule.strategy not in DETERMINISTIC or m.fields:
                out.append(
                    (
                        rule.origin or where(c.name),
                        f"{schema.qualified}.{c.name} is a primary key column: only hash or tokenize "
                        f"(deterministic) may mask it, got {rule.strategy}"
                        + (" on a field" if m.fields else ""),
                    )
                )
        return out

    def unknown_fields(self, schema: TableSchema) -> list[tuple[str, str]]:
        """Field entries (``col.field``) naming a field the UDT column does not have."""
        out = []
        names = {c.name: c for c in schema.columns}
        for col, fields in self._fields.items():
            c = names.get(col)
            if c is None or c.type.name != "udt" or c.type.udt is None:
                continue
            for f, r in fields.items():
                if f not in c.type.udt.field_names:
                    out.append((r.origin, f"the UDT of {schema.qualified}.{col} has no field {f!r}"))
        return out


def masked_type(t: CqlType, m: Masker) -> CqlType:
    """The type a masked column has in the destinations (masked scalars become text)."""
    if m.whole:
        return _texted(t) if m.changes_type else t
    if t.name == "udt" and t.udt is not None:
        types = list(t.udt.field_types)
        for i, f in enumerate(t.udt.field_names):
            fm = m.fields.get(f)
            if fm is not None and fm.changes_type:
                types[i] = _texted(types[i])
        udt = UdtDef(t.udt.keyspace, t.udt.name, t.udt.field_names, tuple(types))
        return msgspec.structs.replace(t, udt=udt)
    if t.name == "map" and len(t.params) == 2 and any(f.changes_type for f in m.fields.values()):
        return msgspec.structs.replace(t, params=(t.params[0], _texted(t.params[1])))
    return t


def _texted(t: CqlType) -> CqlType:
    if t.name in ("list", "set"):
        return msgspec.structs.replace(t, params=(_texted(t.params[0]),))
    if t.name == "map":
        return msgspec.structs.replace(t, params=(t.params[0], _texted(t.params[1])))
    if t.name == "tuple":
        return msgspec.structs.replace(t, params=tuple(_texted(p) for p in t.params))
    if t.name == "udt" and t.udt is not None:
        udt = UdtDef(
            t.udt.keyspace, t.udt.name, t.udt.field_names, tuple(_texted(p) for p in t.udt.field_types)
        )
        return msgspec.structs.replace(t, udt=udt)
    return TEXT


def masked_schema(schema: TableSchema, plan: TablePlan | None) -> TableSchema:
    """``schema`` as the destinations see it: masked columns with their masked types."""
    if plan is None or plan.empty:
        return schema
    cols: list[Column] = []
    changed = False
    for c in schema.columns:
        m = plan.masker(c.name)
        t = c.type if m is None else masked_type(c.type, m)
        changed |= t != c.type
        cols.append(c if t == c.type else msgspec.structs.replace(c, type=t))
    return msgspec.structs.replace(schema, columns=tuple(cols)) if changed else schema

"""Schema versions compared: what changed between two ``TableSchema`` values of one source table,
and which schema a destination table should be kept at (R-30, R-31). Pure functions, no I/O.

Change kinds (the ``kind`` label of ``cdcd_schema_changes_total``):

==================  =====  =================================================================
kind                level  meaning
==================  =====  =================================================================
column_added        INFO   a regular/static column appeared
column_dropped      INFO   a column disappeared (its destination column stays, no longer written)
column_retyped      INFO   a column was dropped and re-added with a type whose values still fit
                           the destination column (e.g. bigint -> int): written, converted
column_incompatible ERROR  re-added with a type the destination column cannot hold: events
                           writing it go to the validation queue, the other columns flow
udt_changed         INFO   a user type used by a column changed (e.g. ``ALTER TYPE ... ADD``)
cdc_options_changed INFO   preimage/postimage/delta/ttl of the CDC options changed
cdc_disabled        ERROR  CDC was disabled on the table (its log holds no new changes)
key_changed         ERROR  the primary key differs (only possible by dropping and re-creating)
table_dropped       ERROR  the table no longer exists
table_recreated     ERROR  the table was dropped and created again (new id, new CDC log)
==================  =====  =================================================================
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from cdcd.schema import Column, CqlType, TableSchema

__all__ = [
    "BREAKING",
    "Change",
    "ChangeKind",
    "column_list",
    "destination_schema",
    "diff",
    "fingerprint",
    "fits",
]

ChangeKind = Literal[
    "column_added",
    "column_dropped",
    "column_retyped",
    "column_incompatible",
    "udt_changed",
    "cdc_options_changed",
    "cdc_disabled",
    "key_changed",
    "table_dropped",
    "table_recreated",
]
BREAKING: frozenset[str] = frozenset(
    {"column_incompatible", "cdc_disabled", "key_changed", "table_dropped", "table_recreated"}
)


class Change(msgspec.Struct, frozen=True, kw_only=True):
    kind: ChangeKind
    column: str | None = None
    before: str | None = None  # CQL type (or option text) before
    after: str | None = None  # ... and after

    def describe(self) -> str:
        what = self.kind.replace("_", " ")
        if self.column is not None:
            what += f" {self.column}"
        if self.before is not None or self.after is not None:
            what += f" ({self.before or '-'} -> {self.after or '-'})"
        return what


# Integer and floating types ordered by the values they hold: a narrower type's values fit a
# wider column. text and ascii: ascii fits text. Everything else fits only itself.
_WIDTH = {"tinyint": 1, "smallint": 2, "int": 3, "bigint": 4, "varint": 5}
_FLOAT = {"float": 1, "double": 2}


def fits(new: CqlType, old: CqlType) -> bool:
    """Values of CQL type ``new`` can be written to a destination column made for ``old``."""
    if new == old:
        return True
    if new.name in _WIDTH and old.name in _WIDTH:
        return _WIDTH[new.name] <= _WIDTH[old.name]
    if new.name in _FLOAT and old.name in _FLOAT:
        return _FLOAT[new.name] <= _FLOAT[old.name]
    if new.name == "ascii" and old.name == "text":
        return True
    if new.name == old.name == "udt" and new.udt is not None and old.udt is not None:
        # a UDT that gained fields at the end still fits (destinations store UDTs as JSON/tuples
        # built from the current definition; see destination_schema)
        n, o = new.udt, old.udt
        return n.field_names[: len(o.field_names)] == o.field_names and all(
            fits(a, b) for a, b in zip(n.field_types, o.field_types, strict=False)
        )
    return False


def _udts(t: CqlType) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    if t.udt is not None:
        out.append((t.udt.name, t.udt.field_names))
        for ft in t.udt.field_types:
            out.extend(_udts(ft))
    for p in t.params:
        out.extend(_udts(p))
    return out


def diff(before: TableSchema, after: TableSchema) -> list[Change]:
    """What changed from ``before`` to ``after`` (same table name), in a stable order."""
    out: list[Change] = []
    if before.primary_key != after.primary_key:
        out.append(
            Change(
                kind="key_changed",
                before=", ".join(f"{c.name} {c.type.cql()}" for c in before.primary_key),
                after=", ".join(f"{c.name} {c.type.cql()}" for c in after.primary_key),
            )
        )
    old = {c.name: c for c in before.columns if c.kind in ("regular", "static")}
    new = {c.name: c for c in after.columns if c.kind in ("regular", "static")}
    for name, c in new.items():
        o = old.get(name)
        if o is None:
            out.append(Change(kind="column_added", column=name, after=c.type.cql()))
        elif o.type.cql() != c.type.cql():
            kind: ChangeKind = "column_retyped" if fits(c.type, o.type) else "column_incompatible"
            out.append(Change(kind=kind, column=name, before=o.type.cql(), after=c.type.cql()))
        elif _udts(o.type) != _udts(c.type):
            out.append(
                Change(kind="udt_changed", column=name, before=_udt_text(o.type), after=_udt_text(c.type))
            )
    for name, o in old.items():
        if name not in new:
            out.append(Change(kind="column_dropped", column=name, before=o.type.cql()))
    if before.cdc != after.cdc:
        if before.cdc.enabled and not after.cdc.enabled:
            out.append(Change(kind="cdc_disabled", before="enabled", after="disabled"))
        else:
            out.append(Change(kind="cdc_options_changed", before=_cdc_text(before), after=_cdc_text(after)))
    return out


def _udt_text(t: CqlType) -> str:
    return "; ".join(f"{n}({', '.join(f)})" for n, f in _udts(t))


def _cdc_text(s: TableSchema) -> str:
    c = s.cdc
    return f"enabled={c.enabled} preimage={c.preimage} postimage={c.postimage} delta={c.delta} ttl={c.ttl}"


def column_list(schema: TableSchema | None) -> list[str]:
    """``["pk int", "v text", ...]`` for logs."""
    if schema is None:
        return []
    return [f"{c.name} {c.type.cql()}" for c in schema.columns]


def fingerprint(schema: TableSchema) -> str:
    """A short stable digest of a schema (columns, types, CDC options)."""
    return hashlib.sha256(msgspec.json.encode(schema)).hexdigest()[:16]


def destination_schema(current: TableSchema, source: TableSchema) -> tuple[TableSchema, frozenset[str]]:
    """The schema a cdcd-managed destination table moves to when the source changes from what
    the destination holds (``current``) to ``source``, and the columns whose events must go to
    the validation queue.

    * columns of ``source`` are all present (added ones with their new type);
    * columns ``current`` has and ``source`` dropped stay (the destination keeps them; they are
      no longer written);
    * a column re-added with a type that fits the destination's keeps the destination's type
      (values convert); one that does not fit keeps it too, and is returned as incompatible.
    """
    have = {c.name: c for c in current.columns}
    incompatible: set[str] = set()
    cols: list[Column] = []
    for c in source.columns:
        o = have.get(c.name)
        if o is None or o.kind != c.kind or o.type == c.type:
            cols.append(c)
        else:
            if not fits(c.type, o.type):
                incompatible.add(c.name)
            cols.append(o)
    names = {c.name for c in cols}
    cols.extend(c for c in current.columns if c.name not in names and c.kind in ("regular", "static"))
    return msgspec.structs.replace(source, columns=tuple(cols)), frozenset(incompatible)

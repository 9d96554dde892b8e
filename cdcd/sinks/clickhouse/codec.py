"""Per-table ClickHouse codec of the fold: converters by column, layouts, CQL order of clustering
keys, and ``merge_into``, the exact application of one collection/UDT delta (pure; no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdcd.events import timeuuid_sort_key
from cdcd.schema import CqlType, TableSchema
from cdcd.sinks.clickhouse.sql import ChLayout
from cdcd.sinks.clickhouse.types import (
    LIST_KEYS_PREFIX,
    Converter,
    freeze,
    from_read,
    holds_blob,
    is_map_array,
    order_key,
    to_ch,
    to_ch_column,
)

__all__ = ["TableCodec", "is_empty", "merge_into"]


def _empty_of(t: CqlType) -> Any:
    if t.name in ("list", "set"):
        return []
    if t.name == "map":
        return [] if is_map_array(t) else {}
    return None


def is_empty(v: Any) -> bool:
    """Null, or an empty collection (which is null in CQL)."""
    return v is None or (isinstance(v, list | dict) and not v)


class TableCodec:
    """Per-table converters, value-space helpers and layouts."""

    def __init__(self, schema: TableSchema, main: ChLayout, static: ChLayout | None) -> None:
        self.schema = schema
        self.main = main
        self.static = static
        self.types: dict[str, CqlType] = {c.name: c.type for c in schema.columns}
        self.names = frozenset(self.types)
        keys = {c.name for c in schema.primary_key}
        self.key_conv = {c.name: to_ch(c.type, nullable=False) for c in schema.primary_key}
        self.conv: dict[str, Converter] = {n: to_ch(t) for n, t in self.types.items() if n not in keys}
        self.key_column = {c.name: to_ch_column(c.type, nullable=False) for c in schema.primary_key}
        self.column = {n: to_ch_column(t) for n, t in self.types.items() if n not in keys}
        blobs = {n for n, t in self.types.items() if holds_blob(t)}
        # Columns holding a blob are read back with Strings as bytes; the rest with Strings as str.
        self.read_formats = {n: "bytes" for n in blobs}
        self.read: dict[str, Converter] = {n: from_read(t, n in blobs) for n, t in self.types.items()}
        self.empty: dict[str, Any] = {n: _empty_of(t) for n, t in self.types.items()}
        self.elem: dict[str, Converter] = {}
        self.elem_key: dict[str, Converter] = {}  # CQL order of set elements / map keys
        self.map_value: dict[str, Converter] = {}
        self.udt_index: dict[str, dict[str, int]] = {}
        self.udt_fields: dict[str, list[Converter]] = {}
        for n, t in self.types.items():
            self.empty[LIST_KEYS_PREFIX + n] = []
            if not t.is_multicell:
                continue
            if t.name in ("list", "set"):
                self.elem[n] = to_ch(t.params[0], nullable=False)
                self.elem_key[n] = order_key(t.params[0])
            elif t.name == "map":
                self.elem[n] = to_ch(t.params[0], nullable=False)
                self.elem_key[n] = order_key(t.params[0])
                self.map_value[n] = to_ch(t.params[1], nullable=False)
            else:
                assert t.udt is not None
                self.udt_index[n] = {f: i for i, f in enumerate(t.udt.field_names)}
                self.udt_fields[n] = [to_ch(ft) for ft in t.udt.field_types]
        ck = schema.clustering_key
        self.ck_order = [order_key(c.type) for c in ck]
        self.ck_desc = [o == "desc" for o in schema.clustering_order] + [False] * len(ck)
        # Key tuples holding lists/dicts (frozen collections in the key) are frozen for hashing.
        self.hash_keys = any(_holds_collection(c.type) for c in schema.primary_key)
        self.multicell = {n for n, t in self.types.items() if t.is_multicell}
        # Non-key frozen collections: an empty one is a value (``_cdc_empty`` records it).
        self.frozen_collections = frozenset(
            n for n, t in self.types.items()
            if t.name in ("list", "set", "map") and not t.is_multicell and n not in keys
        )  # fmt: skip
        self.main_key_names: tuple[str, ...] | None = main.key_names
        self.static_key_names = static.key_names if static else None
        self.main_cols = {c.name for c in main.values}
        # Column -> converter (None: a non-frozen collection/UDT, merged by element) per layout.
        self.main_plan: dict[str, Converter | None] = {
            c.name: None if c.name in self.multicell else self.conv[c.name] for c in main.values
        }
        self.static_plan: dict[str, Converter | None] = {
            c.name: None if c.name in self.multicell else self.conv[c.name]
            for c in (static.values if static else ())
        }
        self.static_cols = {c.name for c in static.values} if static else set()

    def hkey(self, key: tuple[Any, ...]) -> Any:
        return freeze(key) if self.hash_keys else key

    def layout_of(self, static: bool) -> ChLayout | None:
        return self.static if static else self.main

    def in_range(
        self, ck: Sequence[Any], start: Sequence[Any], s_incl: bool, end: Sequence[Any], e_incl: bool
    ) -> bool:
        if start:
            c = self._cmp(ck, start)
            if c < 0 or (c == 0 and not s_incl):
                return False
        if end:
            c = self._cmp(ck, end)
            if c > 0 or (c == 0 and not e_incl):
                return False
        return True

    def _cmp(self, ck: Sequence[Any], bound: Sequence[Any]) -> int:
        """Compare a row's clustering key with a bound prefix in CLUSTERING order (DESC flips)."""
        for i, b in enumerate(bound):
            ka, kb = self.ck_order[i](ck[i]), self.ck_order[i](b)
            if ka != kb:
                r = -1 if ka < kb else 1
                return -r if self.ck_desc[i] else r
        return 0


def _holds_collection(t: CqlType) -> bool:
    if t.is_collection:
        return True
    params = t.udt.field_types if t.udt is not None else t.params
    return any(_holds_collection(p) for p in params)


def merge_into(codec: TableCodec, vals: dict[str, Any], col: str, t: CqlType, arg: Any, *, add: bool) -> None:
    """Apply one collection/UDT delta to ``vals`` (a row's physical values), exactly."""
    if t.name == "list":
        kc = LIST_KEYS_PREFIX + col
        cells = dict(zip(vals.get(kc) or [], vals.get(col) or [], strict=False))
        if add:
            cells.update(arg)
        else:
            for k in arg:
                cells.pop(k, None)
        ordered = sorted(cells.items(), key=lambda kv: timeuuid_sort_key(kv[0]))
        vals[col] = [v for _, v in ordered]
        vals[kc] = [k for k, _ in ordered]
    elif t.name == "set":
        elems = {freeze(x): x for x in vals.get(col) or []}
        for x in arg:
            if add:
                elems[freeze(x)] = x
            else:
                elems.pop(freeze(x), None)
        vals[col] = sorted(elems.values(), key=codec.elem_key[col])
    elif t.name == "map":
        cur = vals.get(col) or ([] if is_map_array(t) else {})
        entries = {freeze(k): (k, v) for k, v in (cur if isinstance(cur, list) else cur.items())}
        if add:
            entries.update((freeze(k), (k, v)) for k, v in arg)
        else:
            for k in arg:
                entries.pop(freeze(k), None)
        ordered = sorted(entries.values(), key=lambda kv: codec.elem_key[col](kv[0]))
        vals[col] = ordered if is_map_array(t) else dict(ordered)
    else:  # non-frozen UDT
        n = len(codec.udt_index[col])
        fields = list(vals.get(col) or (None,) * n)
        if add:
            for i, v in arg:
                fields[i] = v
        else:
            for i in arg:
                fields[i] = None
        vals[col] = tuple(fields) if any(f is not None for f in fields) else None

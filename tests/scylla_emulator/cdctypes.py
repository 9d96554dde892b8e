"""CQL type-text helpers and value forms for the CDC log (EMU-CDC; shared/docs/scylla-cdc.md §1.2).

Type text is as in ``model.ColumnDef.type``: lower-case keywords, UDTs by bare name. Non-frozen
collections and UDTs are "multi-cell"; their state is handled as ``list[(cell_key, value)]`` in
cell-key order (set values are None, UDT keys are field indices), and their log values are frozen
forms built here: maps and lists -> ``cassandra.util.OrderedMap``, sets -> ``SortedSet``,
UDTs -> ``UdtValue`` (a tuple that reads as null past its end, so a UDT value of unknown arity
serializes with every field present).
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from cassandra.util import OrderedMap, SortedSet

__all__ = [
    "NATIVE_TYPES",
    "UdtValue",
    "clustering_cmp",
    "collection_kind",
    "deleted_elements_type",
    "frozen_value",
    "is_multicell",
    "key_sort",
    "log_value_type",
    "split_type",
]

NATIVE_TYPES = frozenset(
    {
        "ascii", "bigint", "blob", "boolean", "counter", "date", "decimal", "double", "duration",
        "float", "inet", "int", "smallint", "text", "time", "timestamp", "timeuuid", "tinyint",
        "uuid", "varchar", "varint", "empty",
    }
)  # fmt: skip
_PARAMETERIZED = frozenset({"list", "set", "map", "tuple", "frozen", "vector"})


def split_type(text: str) -> tuple[str, list[str]]:
    """``"map<int, frozen<list<text>>>"`` -> ``("map", ["int", "frozen<list<text>>"])``."""
    text = text.strip()
    lt = text.find("<")
    if lt < 0:
        return text.lower() if text.lower() in NATIVE_TYPES else text, []
    if not text.endswith(">"):
        raise ValueError(f"not a CQL type: {text!r}")
    name, inner = text[:lt].strip().lower(), text[lt + 1 : -1]
    params, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(cur.strip())
            cur = ""
        else:
            cur += ch
    params.append(cur.strip())
    return name, params


def collection_kind(text: str) -> str | None:
    """'map' | 'set' | 'list' | 'udt' for a non-frozen (multi-cell) type, else None."""
    name, _params = split_type(text)
    if name in ("map", "set", "list"):
        return name
    if name in NATIVE_TYPES or name in _PARAMETERIZED or name.startswith("'"):
        return None
    return "udt"


def is_multicell(text: str) -> bool:
    return collection_kind(text) is not None


def log_value_type(text: str) -> str:
    """Type of the log's value column for a base column type (lists become maps keyed by timeuuid)."""
    kind = collection_kind(text)
    if kind is None:
        return text
    _name, params = split_type(text)
    if kind == "list":
        return f"frozen<map<timeuuid, {params[0]}>>"
    return f"frozen<{text}>"


def deleted_elements_type(text: str) -> str:
    kind = collection_kind(text)
    _name, params = split_type(text)
    if kind in ("map", "set"):
        return f"frozen<set<{params[0]}>>"
    if kind == "list":
        return "frozen<set<timeuuid>>"
    if kind == "udt":
        return "frozen<set<smallint>>"
    raise ValueError(f"{text} is not a non-frozen collection or UDT")


class UdtValue(tuple):  # type: ignore[type-arg]
    """A frozen UDT value; fields past the end read as None (null), so it serializes against any
    arity of the type (the driver's ``UserType.serialize_safe`` indexes ``val[i]`` per field)."""

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, int) and i >= len(self):
            return None
        return tuple.__getitem__(self, i)


def _timeuuid_key(u: uuid.UUID) -> tuple[int, bytes]:
    # utils/UUID.hh::timeuuid_tri_compare: timestamp, then lsb bytes as signed bytes
    return (u.time, bytes(b ^ 0x80 for b in u.bytes[8:]))


def _uuid_key(u: uuid.UUID) -> tuple[int, int, bytes]:
    # uuid_type compare: version first, time-ordered for v1, then the bytes
    return (u.version or 0, u.time if u.version == 1 else u.int >> 64, u.bytes)


def key_sort(type_text: str) -> Callable[[Any], Any]:
    """A sort key giving CQL order for values of ``type_text`` (best effort for exotic types)."""
    name, _params = split_type(type_text)
    if name == "timeuuid":
        return _timeuuid_key
    if name == "uuid":
        return _uuid_key
    if name in ("text", "varchar", "ascii"):
        return lambda s: s.encode("utf-8")
    return lambda v: v


def sorted_cells(cells: Iterable[tuple[Any, Any]], key_type: str) -> list[tuple[Any, Any]]:
    out = list(cells)
    kf = key_sort(key_type)
    with contextlib.suppress(TypeError):
        out.sort(key=lambda kv: kf(kv[0]))
    return out


def cell_key_type(text: str) -> str:
    kind = collection_kind(text)
    _name, params = split_type(text)
    if kind in ("map", "set"):
        return params[0]
    if kind == "list":
        return "timeuuid"
    return "smallint"


def _set_of(items: list[Any]) -> Any:
    try:
        return SortedSet(items)
    except TypeError:
        return list(items)


def frozen_value(text: str, cells: list[tuple[Any, Any]]) -> Any:
    """The log value of a multi-cell column of type ``text`` holding ``cells`` (in cell-key order)."""
    kind = collection_kind(text)
    if kind in ("map", "list"):
        return OrderedMap(cells)
    if kind == "set":
        return _set_of([k for k, _v in cells])
    if kind == "udt":
        if not cells:
            return UdtValue(())
        size = max(int(k) for k, _v in cells) + 1
        fields: list[Any] = [None] * size
        for k, v in cells:
            fields[int(k)] = v
        return UdtValue(fields)
    raise ValueError(f"{text} is not a non-frozen collection or UDT")


def deleted_set(keys: list[Any]) -> Any:
    return _set_of(keys)


def _cmp(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def clustering_cmp(types: list[str], orders: list[str]) -> Callable[[tuple[Any, ...], tuple[Any, ...]], int]:
    """Three-way compare of clustering prefixes in clustering order (DESC columns reversed);
    on a common prefix, the shorter one sorts first."""
    keys = [key_sort(t) for t in types]

    def cmp(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            c = _cmp(keys[i](x), keys[i](y))
            if c:
                return -c if orders[i] == "desc" else c
        return _cmp(len(a), len(b))

    return cmp


def sort_by_cmp(items: list[Any], cmp: Callable[[Any, Any], int], key: Callable[[Any], Any]) -> list[Any]:
    return sorted(items, key=functools.cmp_to_key(lambda x, y: cmp(key(x), key(y))))

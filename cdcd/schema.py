"""Source table schemas as cdcd sees them: CQL types, columns and the table's CDC options.

Built from the driver's metadata by ``cdcd.scylla`` (``TableSchema.from_driver``); sinks map these
types to their own (each sink owns its type map, R-05). Pure data, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

__all__ = [
    "ATOMIC_TYPES",
    "CdcOptions",
    "Column",
    "ColumnKind",
    "CqlType",
    "TableSchema",
    "UdtDef",
    "parse_cdc_extension",
    "parse_cql_type",
]

ColumnKind = Literal["partition_key", "clustering", "static", "regular"]

ATOMIC_TYPES = frozenset(
    {
        "ascii", "bigint", "blob", "boolean", "counter", "date", "decimal", "double", "duration",
        "float", "inet", "int", "smallint", "text", "time", "timestamp", "timeuuid", "tinyint",
        "uuid", "varchar", "varint",
    }
)  # fmt: skip


class UdtDef(msgspec.Struct, frozen=True):
    keyspace: str
    name: str
    field_names: tuple[str, ...]
    field_types: tuple[CqlType, ...]


class CqlType(msgspec.Struct, frozen=True):
    """A CQL type. ``name`` is an atomic type name, or 'list', 'set', 'map', 'tuple', 'udt'."""

    name: str
    params: tuple[CqlType, ...] = ()
    frozen: bool = False
    udt: UdtDef | None = None

    @property
    def is_collection(self) -> bool:
        return self.name in ("list", "set", "map")

    @property
    def is_multicell(self) -> bool:
        """Non-frozen collection or UDT: CDC logs element-level deltas for it."""
        return (self.is_collection or self.name == "udt") and not self.frozen

    def cql(self) -> str:
        """The type as CQL text, e.g. ``frozen<map<int, text>>``."""
        if self.name == "udt":
            assert self.udt is not None
            inner = self.udt.name
        elif self.params:
            inner = f"{self.name}<{', '.join(p.cql() for p in self.params)}>"
        else:
            inner = self.name
        return f"frozen<{inner}>" if self.frozen and self.name != "tuple" else inner


class CdcOptions(msgspec.Struct, frozen=True):
    enabled: bool = False
    preimage: Literal["false", "true", "full"] = "false"
    postimage: bool = False
    delta: Literal["full", "keys"] = "full"
    ttl: int = 86400


class Column(msgspec.Struct, frozen=True):
    name: str
    type: CqlType
    kind: ColumnKind
    position: int = 0  # order within the partition key / clustering key


class TableSchema(msgspec.Struct, frozen=True):
    keyspace: str
    name: str
    columns: tuple[Column, ...]  # partition key, clustering key (in order), then the rest
    clustering_order: tuple[Literal["asc", "desc"], ...] = ()
    cdc: CdcOptions = CdcOptions()

    @property
    def qualified(self) -> str:
        return f"{self.keyspace}.{self.name}"

    @property
    def partition_key(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind == "partition_key")

    @property
    def clustering_key(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind == "clustering")

    @property
    def primary_key(self) -> tuple[Column, ...]:
        return self.partition_key + self.clustering_key

    @property
    def static_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind == "static")

    @property
    def regular_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.kind == "regular")

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @classmethod
    def from_driver(cls, table: Any, keyspace: Any) -> TableSchema:
        """Build from the driver's ``TableMetadata`` and its ``KeyspaceMetadata``."""
        udts = keyspace.user_types

        def lookup(name: str) -> UdtDef:
            ut = udts[name]
            return UdtDef(
                keyspace=ut.keyspace,
                name=ut.name,
                field_names=tuple(ut.field_names),
                field_types=tuple(parse_cql_type(t, lookup) for t in ut.field_types),
            )

        cols: list[Column] = []
        for i, c in enumerate(table.partition_key):
            cols.append(Column(c.name, parse_cql_type(c.cql_type, lookup), "partition_key", i))
        order: list[Literal["asc", "desc"]] = []
        for i, c in enumerate(table.clustering_key):
            cols.append(Column(c.name, parse_cql_type(c.cql_type, lookup), "clustering", i))
            order.append("desc" if c.is_reversed else "asc")
        keys = {c.name for c in cols}
        for c in table.columns.values():
            if c.name in keys:
                continue
            kind: ColumnKind = "static" if c.is_static else "regular"
            cols.append(Column(c.name, parse_cql_type(c.cql_type, lookup), kind))
        ext = (table.extensions or {}).get("cdc")
        return cls(
            keyspace=table.keyspace_name,
            name=table.name,
            columns=tuple(cols),
            clustering_order=tuple(order),
            cdc=parse_cdc_extension(ext) if ext else CdcOptions(),
        )


_TOKEN = re.compile(r"\s*([A-Za-z0-9_.\"]+|<|>|,)")


def parse_cql_type(text: str, udt_lookup: Callable[[str], UdtDef] | None = None) -> CqlType:
    """Parse CQL type text as the driver reports it (``frozen<map<int, text>>``, ``tuple<int, ut>``).

    Raises ValueError for text that is not a CQL type, or a UDT name with no ``udt_lookup``.
    """
    tokens = _TOKEN.findall(text)
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", text):
        raise ValueError(f"not a CQL type: {text!r}")
    pos = 0

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"unexpected end of CQL type: {text!r}")
        tok: str = tokens[pos]
        pos += 1
        return tok

    def parse(frozen: bool) -> CqlType:
        name = take().strip('"').lower()
        if name == "frozen":
            if take() != "<":
                raise ValueError(f"expected '<' after frozen in {text!r}")
            inner = parse(True)
            if take() != ">":
                raise ValueError(f"expected '>' in {text!r}")
            return inner
        if name in ("list", "set", "map", "tuple"):
            if take() != "<":
                raise ValueError(f"expected '<' after {name} in {text!r}")
            params = [parse(False)]
            while (tok := take()) == ",":
                params.append(parse(False))
            if tok != ">":
                raise ValueError(f"expected '>' in {text!r}")
            want = {"list": 1, "set": 1, "map": 2}.get(name)
            if want is not None and len(params) != want:
                raise ValueError(f"{name} takes {want} type parameter(s) in {text!r}")
            # Elements of collections are always frozen in CQL; tuples are always frozen.
            params = [msgspec.structs.replace(p, frozen=True) if p.params or p.udt else p for p in params]
            return CqlType(name, tuple(params), frozen=frozen or name == "tuple")
        if name in ATOMIC_TYPES:
            return CqlType("text" if name == "varchar" else name)
        if udt_lookup is None:
            raise ValueError(f"unknown CQL type {name!r} in {text!r}")
        return CqlType("udt", frozen=frozen, udt=udt_lookup(name.split(".")[-1]))

    result = parse(False)
    if pos != len(tokens):
        raise ValueError(f"trailing text in CQL type {text!r}")
    return result


def parse_cdc_extension(blob: bytes | Mapping[str, str]) -> CdcOptions:
    """Decode ``system_schema.tables.extensions['cdc']`` (Scylla IDL map<string,string>, int32 LE
    lengths; shared/docs/scylla-cdc.md §3.1) into CdcOptions."""
    if isinstance(blob, Mapping):
        raw = dict(blob)
    else:
        raw = {}
        n = int.from_bytes(blob[0:4], "little")
        i = 4
        for _ in range(n):
            kl = int.from_bytes(blob[i : i + 4], "little")
            k = blob[i + 4 : i + 4 + kl].decode()
            i += 4 + kl
            vl = int.from_bytes(blob[i : i + 4], "little")
            v = blob[i + 4 : i + 4 + vl].decode()
            i += 4 + vl
            raw[k] = v
    pre = raw.get("preimage", "false").lower()
    pre = {"1": "true", "0": "false"}.get(pre, pre)
    return CdcOptions(
        enabled=raw.get("enabled", "false").lower() in ("true", "1"),
        preimage=pre if pre in ("true", "full") else "false",  # type: ignore[arg-type]
        postimage=raw.get("postimage", "false").lower() in ("true", "1"),
        delta="keys" if raw.get("delta", "full").lower() == "keys" else "full",
        ttl=int(raw.get("ttl", "86400")),
    )

"""Schema catalog: keyspaces, tables (``TableRt`` = ``model.TableDef`` + resolved types/key helpers)
and user types. ``schema_version`` changes on every DDL (``bump``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cassandra.murmur3 import murmur3

from tests.scylla_emulator.api import CqlError, ErrorCode
from tests.scylla_emulator.cqltypes_util import CType, parse_type_text, sort_key_fn
from tests.scylla_emulator.model import ColumnDef, TableDef
from tests.scylla_emulator.storage import Desc, TableStore

__all__ = ["MAX_TOKEN", "MIN_TOKEN", "Catalog", "KeyspaceDef", "TableRt", "UserTypeDef"]

MIN_TOKEN = -(1 << 63)
MAX_TOKEN = (1 << 63) - 1


def inv(msg: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, msg)


@dataclass
class UserTypeDef:
    keyspace: str
    name: str
    field_names: list[str]
    field_types: list[str]


@dataclass
class KeyspaceDef:
    name: str
    replication: dict[str, str]
    durable_writes: bool = True
    tablets: dict[str, Any] | None = None
    tables: dict[str, TableRt] = field(default_factory=dict)
    types: dict[str, UserTypeDef] = field(default_factory=dict)
    system: bool = False


class TableRt:
    """A table as the engine uses it: definition, resolved column types, key helpers, storage."""

    def __init__(self, d: TableDef, resolve: Callable[[str, str], CType], store: TableStore | None = None):
        self.d = d
        self.keyspace = d.keyspace
        self.name = d.name
        self.store = store if store is not None else TableStore()
        self.cols: dict[str, ColumnDef] = {c.name: c for c in d.columns}
        self.types: dict[str, CType] = {c.name: resolve(c.type, d.keyspace) for c in d.columns}
        self.pk = d.partition_key
        self.ck = d.clustering_key
        self.statics = [c.name for c in d.static_columns]
        self.regulars = [c.name for c in d.regular_columns]
        self.pk_names = [c.name for c in self.pk]
        self.ck_names = [c.name for c in self.ck]
        self.pk_cass = [self.types[n].cass for n in self.pk_names]
        self.is_counter = any(t.name == "counter" for t in self.types.values())
        # SELECT * order: partition key, clustering key, then the others sorted by name (Scylla).
        others = sorted(self.statics + self.regulars)
        self.star = self.pk_names + self.ck_names + others
        fns = [sort_key_fn(self.types[c.name]) for c in self.ck]
        desc = [c.clustering_order == "desc" for c in self.ck]
        self._ck_fns = fns
        self._ck_desc = desc
        if not any(desc):
            if all(f.__name__ == "_ident" for f in fns):
                self.ck_key: Callable[[tuple[Any, ...]], Any] = tuple
            else:
                self.ck_key = lambda v: tuple(f(x) for f, x in zip(fns, v, strict=False))
        else:
            self.ck_key = self.prefix_key
        self.is_log = d.is_cdc_log

    def prefix_key(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            Desc(f(x)) if d else f(x) for f, d, x in zip(self._ck_fns, self._ck_desc, values, strict=False)
        )

    def component_key(self, i: int, v: Any) -> Any:
        k = self._ck_fns[i](v)
        return Desc(k) if self._ck_desc[i] else k

    def pk_bytes(self, pk: tuple[Any, ...]) -> bytes:
        cass = self.pk_cass
        if len(cass) == 1:
            return bytes(cass[0].serialize(pk[0], 4))
        out = bytearray()
        for c, v in zip(cass, pk, strict=True):
            b = c.serialize(v, 4)
            out += len(b).to_bytes(2, "big")
            out += b
            out += b"\x00"
        return bytes(out)

    def token_of(self, pk: tuple[Any, ...], pkbytes: bytes) -> int:
        if self.is_log:
            sid = pk[0]
            if isinstance(sid, bytes | bytearray) and len(sid) == 16:
                return int.from_bytes(sid[:8], "big", signed=True)
            return MIN_TOKEN
        t: int = murmur3(pkbytes)
        return MAX_TOKEN if t == MIN_TOKEN else t

    def column(self, name: str) -> ColumnDef:
        c = self.cols.get(name)
        if c is None:
            raise inv(f"Undefined column name {name} in table {self.keyspace}.{self.name}")
        return c


class Catalog:
    def __init__(self) -> None:
        self.keyspaces: dict[str, KeyspaceDef] = {}
        self.schema_version = uuid.uuid4()
        self._type_cache: dict[tuple[str, str], CType] = {}

    def bump(self) -> None:
        self.schema_version = uuid.uuid4()
        self._type_cache.clear()

    def keyspace(self, name: str | None) -> KeyspaceDef:
        if name is None:
            raise inv(
                "No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename"
            )
        ks = self.keyspaces.get(name)
        if ks is None:
            raise inv(f"Keyspace {name} does not exist")
        return ks

    def table(self, ks: str | None, name: str) -> TableRt:
        k = self.keyspace(ks)
        t = k.tables.get(name)
        if t is None:
            raise inv(f"unconfigured table {name}")
        return t

    def find_table(self, ks: str, name: str) -> TableRt | None:
        k = self.keyspaces.get(ks)
        return None if k is None else k.tables.get(name)

    def udt_lookup(self, ks: str, name: str) -> tuple[list[str], list[str]] | None:
        k = self.keyspaces.get(ks)
        if k is None or name not in k.types:
            return None
        u = k.types[name]
        return u.field_names, u.field_types

    def resolve(self, text: str, ks: str) -> CType:
        key = (ks, text)
        t = self._type_cache.get(key)
        if t is None:
            t = parse_type_text(text, ks, self.udt_lookup)
            self._type_cache[key] = t
        return t

    def make_rt(self, d: TableDef, store: TableStore | None = None) -> TableRt:
        return TableRt(d, self.resolve, store)

    def all_tables(self) -> list[TableRt]:
        return [t for k in self.keyspaces.values() for t in k.tables.values()]

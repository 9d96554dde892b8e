"""AST of the CQL subset the emulator understands (produced by ``cql.parser``).

Identifiers are already normalised (unquoted -> lower case, quoted -> as written). ``Bind`` nodes are
numbered in order of appearance; their types are inferred later by the engine from context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AddTo",
    "AlterRole",
    "AlterTable",
    "AlterType",
    "Batch",
    "Bind",
    "Condition",
    "CreateKeyspace",
    "CreateRole",
    "CreateTable",
    "CreateType",
    "Delete",
    "DeleteTarget",
    "DropKeyspace",
    "DropRole",
    "DropTable",
    "DropType",
    "FuncCall",
    "GrantPermissions",
    "Insert",
    "ListLit",
    "Literal",
    "MapLit",
    "Prepend",
    "Relation",
    "RemoveFrom",
    "RevokePermissions",
    "Select",
    "Selector",
    "SetElement",
    "SetField",
    "SetLit",
    "SetValue",
    "Statement",
    "Truncate",
    "TupleLit",
    "UdtLit",
    "Update",
    "Use",
    "Using",
]


# ----------------------------------------------------------------------------------------- terms
@dataclass(slots=True)
class Literal:
    kind: str  # int float string uuid hex bool null duration nan infinity
    text: str


@dataclass(slots=True)
class ListLit:
    items: list[Any]


@dataclass(slots=True)
class SetLit:
    items: list[Any]


@dataclass(slots=True)
class MapLit:
    pairs: list[tuple[Any, Any]]


@dataclass(slots=True)
class UdtLit:
    fields: list[tuple[str, Any]]


@dataclass(slots=True)
class TupleLit:
    items: list[Any]


@dataclass(slots=True)
class Bind:
    index: int
    name: str | None = None


@dataclass(slots=True)
class FuncCall:
    name: str  # lower-cased
    args: list[Any]


# ------------------------------------------------------------------------------------ statements
@dataclass(slots=True)
class Using:
    ttl: Any = None  # term
    timestamp: Any = None  # term
    timeout: Any = None  # term (duration)


@dataclass(slots=True)
class Relation:
    """``lhs op rhs``. lhs: ('col', name) | ('token', [names]) | ('multi', [names])."""

    lhs: tuple[str, Any]
    op: str  # = < <= > >= in contains contains_key !=
    rhs: Any  # term; for IN a list of terms or a Bind; for multi a TupleLit/list of TupleLits/Bind


@dataclass(slots=True)
class Condition:
    """LWT condition ``col[elem] op value`` / ``col.field op value``."""

    column: str
    element: Any = None  # term for col[k]
    field: str | None = None  # for col.f
    op: str = "="
    value: Any = None


@dataclass(slots=True)
class SetValue:
    column: str
    value: Any


@dataclass(slots=True)
class SetField:
    column: str
    field: str
    value: Any


@dataclass(slots=True)
class SetElement:
    column: str
    key: Any
    value: Any


@dataclass(slots=True)
class AddTo:
    column: str
    value: Any


@dataclass(slots=True)
class Prepend:
    column: str
    value: Any


@dataclass(slots=True)
class RemoveFrom:
    column: str
    value: Any


@dataclass(slots=True)
class DeleteTarget:
    column: str
    key: Any = None  # term for DELETE c[k]
    field: str | None = None  # DELETE u.f


@dataclass(slots=True)
class Selector:
    """kind: col | writetime | ttl | func | count_star | token. ``args`` for func/token."""

    kind: str
    name: str = ""  # column name or function name
    args: list[Any] = field(default_factory=list)  # Selectors or terms
    alias: str | None = None


@dataclass(slots=True)
class CreateKeyspace:
    name: str
    if_not_exists: bool
    replication: dict[str, str]
    durable_writes: bool = True
    tablets: dict[str, Any] | None = None


@dataclass(slots=True)
class DropKeyspace:
    name: str
    if_exists: bool


@dataclass(slots=True)
class Use:
    keyspace: str


@dataclass(slots=True)
class CreateTable:
    keyspace: str | None
    name: str
    if_not_exists: bool
    columns: list[tuple[str, str, bool]]  # (name, type text, static)
    partition_key: list[str]
    clustering: list[str]
    clustering_order: dict[str, str]
    options: dict[str, Any]
    compact_storage: bool = False


@dataclass(slots=True)
class DropTable:
    keyspace: str | None
    name: str
    if_exists: bool


@dataclass(slots=True)
class AlterTable:
    keyspace: str | None
    name: str
    action: str  # add | drop | with | rename | alter
    columns: list[tuple[str, str, bool]] = field(default_factory=list)  # add: (name, type, static)
    drop: list[str] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Truncate:
    keyspace: str | None
    name: str


@dataclass(slots=True)
class CreateType:
    keyspace: str | None
    name: str
    if_not_exists: bool
    fields: list[tuple[str, str]]


@dataclass(slots=True)
class DropType:
    keyspace: str | None
    name: str
    if_exists: bool


@dataclass(slots=True)
class AlterType:
    keyspace: str | None
    name: str
    add: list[tuple[str, str]] = field(default_factory=list)
    renames: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Insert:
    keyspace: str | None
    table: str
    columns: list[str]
    values: list[Any]
    if_not_exists: bool = False
    using: Using = field(default_factory=Using)


@dataclass(slots=True)
class Update:
    keyspace: str | None
    table: str
    using: Using
    assignments: list[Any]
    where: list[Relation]
    conditions: list[Condition] = field(default_factory=list)
    if_exists: bool = False


@dataclass(slots=True)
class Delete:
    keyspace: str | None
    table: str
    targets: list[DeleteTarget]
    using: Using
    where: list[Relation]
    conditions: list[Condition] = field(default_factory=list)
    if_exists: bool = False


@dataclass(slots=True)
class Batch:
    kind: str  # logged | unlogged | counter
    using: Using
    statements: list[Any]


@dataclass(slots=True)
class Select:
    keyspace: str | None
    table: str
    selectors: list[Selector] | None  # None = *
    where: list[Relation]
    distinct: bool = False
    json: bool = False
    order_by: list[tuple[str, str]] = field(default_factory=list)
    limit: Any = None
    per_partition_limit: Any = None
    allow_filtering: bool = False
    bypass_cache: bool = False
    using: Using = field(default_factory=Using)
    group_by: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- roles and permissions
# A data resource: ``()`` = ALL KEYSPACES, ``(ks,)`` = KEYSPACE ks, ``(ks, table)`` = TABLE ks.table;
# a TABLE written without keyspace is ``(None, table)`` until the session keyspace fills it in.
@dataclass(slots=True)
class CreateRole:
    name: str
    if_not_exists: bool
    options: dict[str, Any]  # password (str), login (bool), superuser (bool)


@dataclass(slots=True)
class AlterRole:
    name: str
    options: dict[str, Any]


@dataclass(slots=True)
class DropRole:
    name: str
    if_exists: bool


@dataclass(slots=True)
class GrantPermissions:
    permissions: frozenset[str] | None  # upper case; None = ALL [PERMISSIONS]
    resource: tuple[str | None, ...]
    role: str


@dataclass(slots=True)
class RevokePermissions:
    permissions: frozenset[str] | None
    resource: tuple[str | None, ...]
    role: str


Statement = (
    CreateKeyspace
    | DropKeyspace
    | Use
    | CreateTable
    | DropTable
    | AlterTable
    | Truncate
    | CreateType
    | DropType
    | AlterType
    | Insert
    | Update
    | Delete
    | Batch
    | Select
    | CreateRole
    | AlterRole
    | DropRole
    | GrantPermissions
    | RevokePermissions
)

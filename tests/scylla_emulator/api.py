"""The boundary between the CQL protocol server and the emulator's engine.

``protocol`` decodes frames and calls an ``Engine``; the engine answers with a ``Result`` or raises
``CqlError``. Bound values cross this boundary as raw bytes (``None`` = null, ``UNSET`` = unset);
the engine knows each bind marker's type and deserializes them itself. Result values are Python
values; the protocol serializes them with ``ColumnSpec.cass_type.serialize(v, 4)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "UNSET",
    "BatchStatement",
    "ColumnSpec",
    "CqlError",
    "Engine",
    "ErrorCode",
    "PreparedInfo",
    "Result",
    "RowsResult",
    "SchemaChangeResult",
    "SetKeyspaceResult",
    "VoidResult",
]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


class ErrorCode:
    """CQL native protocol v4 error codes (native_protocol_v4.spec §9)."""

    SERVER_ERROR = 0x0000
    PROTOCOL_ERROR = 0x000A
    BAD_CREDENTIALS = 0x0100
    UNAVAILABLE = 0x1000
    OVERLOADED = 0x1001
    IS_BOOTSTRAPPING = 0x1002
    TRUNCATE_ERROR = 0x1003
    WRITE_TIMEOUT = 0x1100
    READ_TIMEOUT = 0x1200
    READ_FAILURE = 0x1300
    FUNCTION_FAILURE = 0x1400
    WRITE_FAILURE = 0x1500
    SYNTAX_ERROR = 0x2000
    UNAUTHORIZED = 0x2100
    INVALID = 0x2200
    CONFIG_ERROR = 0x2300
    ALREADY_EXISTS = 0x2400
    UNPREPARED = 0x2500


class CqlError(Exception):
    """An error the server sends as an ERROR frame.

    ``extra`` carries the code-specific body fields, in spec order:
    UNAVAILABLE: consistency(int), required(int), alive(int);
    READ_TIMEOUT: consistency, received, blockfor, data_present(bool);
    WRITE_TIMEOUT: consistency, received, blockfor, write_type(str);
    ALREADY_EXISTS: keyspace(str), table(str);  UNPREPARED: id(bytes).
    """

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(frozen=True)
class ColumnSpec:
    keyspace: str
    table: str
    name: str
    cass_type: Any  # a cassandra.cqltypes._CassandraType subclass (parameterized if needed)


@dataclass
class RowsResult:
    columns: list[ColumnSpec]
    rows: list[list[Any]]
    paging_state: bytes | None = None  # set when more pages follow


@dataclass
class VoidResult:
    pass


@dataclass
class SetKeyspaceResult:
    keyspace: str


@dataclass
class SchemaChangeResult:
    change_type: str  # CREATED | UPDATED | DROPPED
    target: str  # KEYSPACE | TABLE | TYPE | FUNCTION | AGGREGATE
    keyspace: str
    name: str | None = None  # table/type/function name; None for KEYSPACE
    arg_types: list[str] = field(default_factory=list)  # FUNCTION/AGGREGATE only


Result = RowsResult | VoidResult | SetKeyspaceResult | SchemaChangeResult


@dataclass
class PreparedInfo:
    id: bytes
    bind_columns: list[ColumnSpec]
    pk_indexes: list[int]
    result_columns: list[ColumnSpec] | None  # None: no result metadata (non-SELECT)


@dataclass
class BatchStatement:
    query: str | None  # set for a QUERY-kind child
    prepared_id: bytes | None  # set for a prepared child
    values: list[bytes | Any | None]


class Engine(Protocol):
    """What the protocol server needs. All calls run on the server's event loop thread, one at a
    time; the engine is not required to be thread-safe."""

    def supported_options(self) -> dict[str, list[str]]:
        """The SUPPORTED map (CQL_VERSION, COMPRESSION, SCYLLA_* keys)."""
        ...

    def execute(
        self,
        query: str,
        values: list[Any],
        *,
        keyspace: str | None,
        consistency: int,
        page_size: int | None,
        paging_state: bytes | None,
        timestamp: int | None,
        names: list[str] | None = None,
    ) -> Result: ...

    def prepare(self, query: str, *, keyspace: str | None) -> PreparedInfo: ...

    def execute_prepared(
        self,
        prepared_id: bytes,
        values: list[Any],
        *,
        keyspace: str | None,
        consistency: int,
        page_size: int | None,
        paging_state: bytes | None,
        timestamp: int | None,
    ) -> Result:
        """Raises CqlError(UNPREPARED, id=prepared_id) for an unknown id."""
        ...

    def batch(
        self,
        kind: int,  # 0 LOGGED, 1 UNLOGGED, 2 COUNTER
        statements: list[BatchStatement],
        *,
        keyspace: str | None,
        consistency: int,
        timestamp: int | None,
    ) -> Result: ...

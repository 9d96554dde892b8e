"""CQL native protocol v4 codec of the emulator (frames, request decoding, response encoding).

Pure functions and small dataclasses, no I/O: ``server`` reads frames off the socket, calls the
``decode_*`` functions, hands the requests to the engine (``api.Engine``) and writes the frames
built by the ``encode_*`` functions.

Contract (apache/cassandra ``doc/native_protocol_v4.spec``):

* only protocol version 4 is served; a frame of any other version is answered with a
  PROTOCOL_ERROR whose message contains "unsupported protocol version" in a v4 frame (a v3 frame
  in v3), which is what makes the driver downgrade from its default v5;
* every malformed body raises ``CqlError(PROTOCOL_ERROR, <what was wrong>)``;
* bound values stay raw bytes (``None`` = null, ``api.UNSET`` = unset); result values are
  serialized with ``ColumnSpec.cass_type.serialize(value, 4)``;
* compression: ``lz4`` (v4 layout: 4-byte big-endian uncompressed length + LZ4 block), the only
  entry of ``COMPRESSION``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import lz4.block

from tests.scylla_emulator.api import (
    UNSET,
    ColumnSpec,
    CqlError,
    ErrorCode,
    PreparedInfo,
    Result,
    RowsResult,
    SchemaChangeResult,
    SetKeyspaceResult,
    VoidResult,
)

__all__ = [
    "COMPRESSION",
    "HEADER",
    "MAX_FRAME_BODY",
    "VERSION",
    "BatchRequest",
    "Opcode",
    "QueryParams",
    "compress_lz4",
    "decode_auth_response",
    "decode_batch",
    "decode_execute",
    "decode_prepare",
    "decode_query",
    "decode_register",
    "decode_startup",
    "decompress_lz4",
    "encode_auth_success",
    "encode_authenticate",
    "encode_error",
    "encode_event_schema_change",
    "encode_frame",
    "encode_prepared",
    "encode_ready",
    "encode_result",
    "encode_supported",
    "parse_header",
    "protocol_error",
    "type_option",
]

VERSION = 4
HEADER = struct.Struct(">BBhBi")  # version|direction, flags, stream, opcode, length
MAX_FRAME_BODY = 256 * 1024 * 1024  # the spec's frame size limit
COMPRESSION = ["lz4"]
RESPONSE = 0x80

FLAG_COMPRESSION = 0x01
FLAG_TRACING = 0x02
FLAG_CUSTOM_PAYLOAD = 0x04
FLAG_WARNING = 0x08
FLAG_BETA = 0x10

# QUERY/EXECUTE/BATCH parameter flags
Q_VALUES = 0x01
Q_SKIP_METADATA = 0x02
Q_PAGE_SIZE = 0x04
Q_PAGING_STATE = 0x08
Q_SERIAL_CONSISTENCY = 0x10
Q_DEFAULT_TIMESTAMP = 0x20
Q_NAMES = 0x40

# RESULT kinds and metadata flags
KIND_VOID, KIND_ROWS, KIND_SET_KEYSPACE, KIND_PREPARED, KIND_SCHEMA_CHANGE = 1, 2, 3, 4, 5
M_GLOBAL_TABLES_SPEC = 0x0001
M_HAS_MORE_PAGES = 0x0002
M_NO_METADATA = 0x0004

_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_I64 = struct.Struct(">q")
_NULL = _I32.pack(-1)


class Opcode:
    ERROR = 0x00
    STARTUP = 0x01
    READY = 0x02
    AUTHENTICATE = 0x03
    OPTIONS = 0x05
    SUPPORTED = 0x06
    QUERY = 0x07
    RESULT = 0x08
    PREPARE = 0x09
    EXECUTE = 0x0A
    REGISTER = 0x0B
    EVENT = 0x0C
    BATCH = 0x0D
    AUTH_CHALLENGE = 0x0E
    AUTH_RESPONSE = 0x0F
    AUTH_SUCCESS = 0x10

    NAMES = {
        0x00: "ERROR", 0x01: "STARTUP", 0x02: "READY", 0x03: "AUTHENTICATE", 0x04: "CREDENTIALS",
        0x05: "OPTIONS", 0x06: "SUPPORTED", 0x07: "QUERY", 0x08: "RESULT", 0x09: "PREPARE",
        0x0A: "EXECUTE", 0x0B: "REGISTER", 0x0C: "EVENT", 0x0D: "BATCH", 0x0E: "AUTH_CHALLENGE",
        0x0F: "AUTH_RESPONSE", 0x10: "AUTH_SUCCESS",
    }  # fmt: skip


def protocol_error(message: str) -> CqlError:
    return CqlError(ErrorCode.PROTOCOL_ERROR, message)


# ------------------------------------------------------------------------------------------ frames


def parse_header(header: bytes) -> tuple[int, int, int, int, int]:
    """(version, flags, stream, opcode, body length) of a 9-byte header; the version has the
    direction bit removed. Raises a PROTOCOL_ERROR for a response-direction frame or a bad length."""
    vbyte, flags, stream, opcode, length = HEADER.unpack(header)
    if vbyte & RESPONSE:
        raise protocol_error("Invalid frame: response-direction bit set on a request")
    if length < 0 or length > MAX_FRAME_BODY:
        raise protocol_error(f"Invalid frame body length {length} (max {MAX_FRAME_BODY})")
    return vbyte & 0x7F, flags, stream, opcode, length


def encode_frame(stream: int, opcode: int, body: bytes, *, version: int = VERSION, flags: int = 0) -> bytes:
    return HEADER.pack(version | RESPONSE, flags, stream, opcode, len(body)) + body


def compress_lz4(body: bytes) -> bytes:
    packed: bytes = lz4.block.compress(body, store_size=False)
    return _I32.pack(len(body)) + packed


def decompress_lz4(body: bytes) -> bytes:
    if len(body) < 4:
        raise protocol_error("Invalid lz4-compressed body: shorter than its 4-byte length prefix")
    size = _I32.unpack_from(body)[0]
    try:
        out: bytes = lz4.block.decompress(body[4:], uncompressed_size=size)
    except Exception as exc:
        raise protocol_error(f"Invalid lz4-compressed body: {exc}") from None
    return out


# --------------------------------------------------------------------------------- body reading


class Reader:
    """Cursor over a request body; every read past the end is a PROTOCOL_ERROR."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = buf
        self.pos = 0
        self.what = what

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise protocol_error(f"Malformed {self.what} message: body truncated at byte {self.pos}")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        v: int = _U16.unpack(self._take(2))[0]
        return v

    def i32(self) -> int:
        v: int = _I32.unpack(self._take(4))[0]
        return v

    def i64(self) -> int:
        v: int = _I64.unpack(self._take(8))[0]
        return v

    def string(self) -> str:
        return self._utf8(self._take(self.u16()))

    def long_string(self) -> str:
        n = self.i32()
        if n < 0:
            raise protocol_error(f"Malformed {self.what} message: negative [long string] length {n}")
        return self._utf8(self._take(n))

    def short_bytes(self) -> bytes:
        return self._take(self.u16())

    def bytes_(self) -> bytes | None:
        n = self.i32()
        return None if n < 0 else self._take(n)

    def value(self) -> Any:
        n = self.i32()
        if n == -1:
            return None
        if n == -2:
            return UNSET
        if n < 0:
            raise protocol_error(f"Malformed {self.what} message: invalid [value] length {n}")
        return self._take(n)

    def string_list(self) -> list[str]:
        return [self.string() for _ in range(self.u16())]

    def string_map(self) -> dict[str, str]:
        return {self.string(): self.string() for _ in range(self.u16())}

    def bytes_map(self) -> dict[str, bytes | None]:
        return {self.string(): self.bytes_() for _ in range(self.u16())}

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise protocol_error(
                f"Malformed {self.what} message: {len(self.buf) - self.pos} unexpected trailing bytes"
            )

    def _utf8(self, b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise protocol_error(f"Malformed {self.what} message: string is not valid UTF-8") from None


# ------------------------------------------------------------------------------- request bodies


@dataclass
class QueryParams:
    consistency: int = 1
    values: list[Any] = field(default_factory=list)
    names: list[str] | None = None
    skip_metadata: bool = False
    page_size: int | None = None
    paging_state: bytes | None = None
    serial_consistency: int | None = None
    timestamp: int | None = None


@dataclass
class BatchChild:
    query: str | None
    prepared_id: bytes | None
    values: list[Any]
    names: list[str] | None = None


@dataclass
class BatchRequest:
    kind: int
    children: list[BatchChild]
    consistency: int
    serial_consistency: int | None
    timestamp: int | None


def _read_values(r: Reader, with_names: bool) -> tuple[list[Any], list[str] | None]:
    n = r.u16()
    values: list[Any] = []
    names: list[str] | None = [] if with_names else None
    for _ in range(n):
        if names is not None:
            names.append(r.string())
        values.append(r.value())
    return values, names


def _read_params(r: Reader) -> QueryParams:
    p = QueryParams(consistency=r.u16())
    flags = r.u8()
    if flags & ~0x7F:
        raise protocol_error(f"Malformed {r.what} message: unknown query flags 0x{flags:02x}")
    if flags & Q_VALUES:
        p.values, p.names = _read_values(r, bool(flags & Q_NAMES))
    p.skip_metadata = bool(flags & Q_SKIP_METADATA)
    if flags & Q_PAGE_SIZE:
        size = r.i32()
        p.page_size = size if size > 0 else None
    if flags & Q_PAGING_STATE:
        p.paging_state = r.bytes_()
    if flags & Q_SERIAL_CONSISTENCY:
        p.serial_consistency = r.u16()
    if flags & Q_DEFAULT_TIMESTAMP:
        p.timestamp = r.i64()
    return p


def _with_payload(body: bytes, flags: int, what: str) -> Reader:
    r = Reader(body, what)
    if flags & FLAG_CUSTOM_PAYLOAD:
        r.bytes_map()  # custom payloads are accepted and ignored
    return r


def decode_startup(body: bytes, flags: int = 0) -> dict[str, str]:
    r = _with_payload(body, flags, "STARTUP")
    options = r.string_map()
    r.end()
    if "CQL_VERSION" not in options:
        raise protocol_error("STARTUP message is missing the mandatory CQL_VERSION option")
    comp = options.get("COMPRESSION")
    if comp is not None and comp.lower() not in COMPRESSION:
        raise protocol_error(f"Unknown compression algorithm: {comp}")
    return options


def decode_query(body: bytes, flags: int = 0) -> tuple[str, QueryParams]:
    r = _with_payload(body, flags, "QUERY")
    query = r.long_string()
    params = _read_params(r)
    r.end()
    return query, params


def decode_prepare(body: bytes, flags: int = 0) -> str:
    r = _with_payload(body, flags, "PREPARE")
    query = r.long_string()
    r.end()
    return query


def decode_execute(body: bytes, flags: int = 0) -> tuple[bytes, QueryParams]:
    r = _with_payload(body, flags, "EXECUTE")
    prepared_id = r.short_bytes()
    params = _read_params(r)
    r.end()
    return prepared_id, params


def decode_batch(body: bytes, flags: int = 0) -> BatchRequest:
    """Decode a BATCH. The "names for values" flag (0x40) comes after the children whose layout it
    changes (CASSANDRA-10246), so the body is parsed without names first and, if that does not
    yield a consistent message, with names; the flags found must agree with the layout used."""
    r = _with_payload(body, flags, "BATCH")
    start = r.pos
    first: CqlError | None = None
    for with_names in (False, True):
        r.pos = start
        try:
            req = _batch_layout(r, with_names)
        except CqlError as exc:
            first = first or exc
            continue
        return req
    assert first is not None
    raise first


def _batch_layout(r: Reader, with_names: bool) -> BatchRequest:
    kind = r.u8()
    if kind > 2:
        raise protocol_error(f"Malformed BATCH message: unknown batch type {kind}")
    children: list[BatchChild] = []
    for _ in range(r.u16()):
        ckind = r.u8()
        if ckind == 0:
            query: str | None = r.long_string()
            pid: bytes | None = None
        elif ckind == 1:
            query, pid = None, r.short_bytes()
        else:
            raise protocol_error(f"Malformed BATCH message: unknown statement kind {ckind}")
        values, names = _read_values(r, with_names)
        children.append(BatchChild(query, pid, values, names))
    consistency = r.u16()
    bflags = r.u8()
    if bflags & ~(Q_SERIAL_CONSISTENCY | Q_DEFAULT_TIMESTAMP | Q_NAMES):
        raise protocol_error(f"Malformed BATCH message: unknown batch flags 0x{bflags:02x}")
    if bool(bflags & Q_NAMES) != with_names:
        raise protocol_error("Malformed BATCH message: values do not match the 'names for values' flag")
    serial = r.u16() if bflags & Q_SERIAL_CONSISTENCY else None
    timestamp = r.i64() if bflags & Q_DEFAULT_TIMESTAMP else None
    r.end()
    return BatchRequest(kind, children, consistency, serial, timestamp)


def decode_register(body: bytes, flags: int = 0) -> list[str]:
    r = _with_payload(body, flags, "REGISTER")
    events = r.string_list()
    r.end()
    for e in events:
        if e not in ("TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE"):
            raise protocol_error(f"Invalid event type in REGISTER message: {e}")
    return events


def decode_auth_response(body: bytes, flags: int = 0) -> bytes:
    r = _with_payload(body, flags, "AUTH_RESPONSE")
    token = r.bytes_()
    r.end()
    return token or b""


# ------------------------------------------------------------------------------ response bodies


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return _U16.pack(len(b)) + b


def _short_bytes(b: bytes) -> bytes:
    return _U16.pack(len(b)) + b


def _string_list(items: list[str]) -> bytes:
    return _U16.pack(len(items)) + b"".join(_string(s) for s in items)


_NATIVE_CODES = {
    "ascii": 0x0001, "bigint": 0x0002, "blob": 0x0003, "boolean": 0x0004, "counter": 0x0005,
    "decimal": 0x0006, "double": 0x0007, "float": 0x0008, "int": 0x0009, "timestamp": 0x000B,
    "uuid": 0x000C, "text": 0x000D, "varchar": 0x000D, "varint": 0x000E, "timeuuid": 0x000F,
    "inet": 0x0010, "date": 0x0011, "time": 0x0012, "smallint": 0x0013, "tinyint": 0x0014,
}  # fmt: skip
_MARSHAL = "org.apache.cassandra.db.marshal."


def _unwrap(t: Any) -> Any:
    from cassandra import cqltypes as ct

    while True:
        subs: Any = getattr(t, "subtypes", None)
        if not (subs and isinstance(t, type) and issubclass(t, (ct.FrozenType, ct.ReversedType))):
            return t
        t = subs[0]


def _class_name(t: Any) -> str:
    """Full marshal class name of a type, as a v4 Custom option carries it."""
    from cassandra import cqltypes as ct

    t = _unwrap(t)
    if issubclass(t, ct.VectorType):
        return f"{_MARSHAL}VectorType({_class_name(t.subtype)}, {t.vector_size})"
    if issubclass(t, ct.UserType):
        fields = ",".join(
            f"{n.encode().hex()}:{_class_name(s)}" for n, s in zip(t.fieldnames, t.subtypes, strict=True)
        )
        return f"{_MARSHAL}UserType({t.keyspace},{t.typename.encode().hex()},{fields})"
    name: str = t.cass_parameterized_type(full=True)
    return name


def type_option(t: Any) -> bytes:
    """The [option] describing a ``cassandra.cqltypes`` type (spec §4.2.5.2). ``duration`` and
    ``vector`` are Custom in v4; frozen/reversed wrappers are transparent."""
    from cassandra import cqltypes as ct

    t = _unwrap(t)
    code = _NATIVE_CODES.get(getattr(t, "typename", ""))
    if code is not None and not issubclass(t, ct.UserType):
        return _U16.pack(code)
    if issubclass(t, ct.UserType):
        parts = [_U16.pack(0x0030), _string(t.keyspace), _string(t.typename), _U16.pack(len(t.fieldnames))]
        for n, s in zip(t.fieldnames, t.subtypes, strict=True):
            parts += [_string(n), type_option(s)]
        return b"".join(parts)
    if issubclass(t, ct.TupleType):
        return _U16.pack(0x0031) + _U16.pack(len(t.subtypes)) + b"".join(type_option(s) for s in t.subtypes)
    if issubclass(t, ct.ListType):
        return _U16.pack(0x0020) + type_option(t.subtypes[0])
    if issubclass(t, ct.SetType):
        return _U16.pack(0x0022) + type_option(t.subtypes[0])
    if issubclass(t, ct.MapType):
        return _U16.pack(0x0021) + type_option(t.subtypes[0]) + type_option(t.subtypes[1])
    return _U16.pack(0x0000) + _string(_class_name(t))


def _col_specs(cols: list[ColumnSpec]) -> tuple[int, bytes]:
    """(global-tables-spec flag or 0, encoded column specs)."""
    if cols and all(c.keyspace == cols[0].keyspace and c.table == cols[0].table for c in cols):
        body = [_string(cols[0].keyspace), _string(cols[0].table)]
        body += [_string(c.name) + type_option(c.cass_type) for c in cols]
        return M_GLOBAL_TABLES_SPEC, b"".join(body)
    parts = [
        _string(c.keyspace) + _string(c.table) + _string(c.name) + type_option(c.cass_type) for c in cols
    ]
    return 0, b"".join(parts)


def _rows_metadata(cols: list[ColumnSpec], paging_state: bytes | None, no_metadata: bool) -> bytes:
    flags = 0
    paging = b""
    if paging_state is not None:
        flags |= M_HAS_MORE_PAGES
        paging = _I32.pack(len(paging_state)) + paging_state
    if no_metadata:
        return _I32.pack(flags | M_NO_METADATA) + _I32.pack(len(cols)) + paging
    gflag, specs = _col_specs(cols)
    return _I32.pack(flags | gflag) + _I32.pack(len(cols)) + paging + specs


def _rows_body(result: RowsResult) -> bytes:
    sers = [c.cass_type.serialize for c in result.columns]
    ncols = len(sers)
    pack = _I32.pack
    out = [pack(len(result.rows))]
    append = out.append
    for row in result.rows:
        if len(row) != ncols:
            raise CqlError(ErrorCode.SERVER_ERROR, f"Row has {len(row)} values for {ncols} columns")
        for i, v in enumerate(row):
            if v is None:
                append(_NULL)
                continue
            try:
                data = sers[i](v, VERSION)
            except Exception as exc:
                col = result.columns[i]
                raise CqlError(
                    ErrorCode.SERVER_ERROR, f"Cannot serialize value {v!r} of column {col.name}: {exc}"
                ) from None
            append(pack(len(data)))
            append(data)
    return b"".join(out)


def _schema_change_body(r: SchemaChangeResult) -> bytes:
    parts = [_string(r.change_type), _string(r.target), _string(r.keyspace)]
    if r.target != "KEYSPACE":
        if r.name is None:
            raise CqlError(ErrorCode.SERVER_ERROR, f"Schema change on a {r.target} without a name")
        parts.append(_string(r.name))
        if r.target in ("FUNCTION", "AGGREGATE"):
            parts.append(_string_list(r.arg_types))
    return b"".join(parts)


def encode_result(result: Result, *, skip_metadata: bool = False) -> bytes:
    """RESULT body for an engine result (Void, Rows, Set_keyspace, Schema_change)."""
    if isinstance(result, RowsResult):
        return (
            _I32.pack(KIND_ROWS)
            + _rows_metadata(result.columns, result.paging_state, skip_metadata)
            + _rows_body(result)
        )
    if isinstance(result, VoidResult):
        return _I32.pack(KIND_VOID)
    if isinstance(result, SetKeyspaceResult):
        return _I32.pack(KIND_SET_KEYSPACE) + _string(result.keyspace)
    if isinstance(result, SchemaChangeResult):
        return _I32.pack(KIND_SCHEMA_CHANGE) + _schema_change_body(result)
    raise CqlError(ErrorCode.SERVER_ERROR, f"Engine returned an unknown result {type(result).__name__}")


def encode_prepared(info: PreparedInfo) -> bytes:
    """RESULT/Prepared body: id, bind metadata with partition-key indexes, result metadata."""
    gflag, specs = _col_specs(info.bind_columns)
    pk = b"".join(_U16.pack(i) for i in info.pk_indexes)
    meta = _I32.pack(gflag) + _I32.pack(len(info.bind_columns)) + _I32.pack(len(info.pk_indexes)) + pk + specs
    if info.result_columns is None:
        result_meta = _I32.pack(M_NO_METADATA) + _I32.pack(0)
    else:
        result_meta = _rows_metadata(info.result_columns, None, False)
    return _I32.pack(KIND_PREPARED) + _short_bytes(info.id) + meta + result_meta


def encode_event_schema_change(r: SchemaChangeResult) -> bytes:
    return _string("SCHEMA_CHANGE") + _schema_change_body(r)


def encode_ready() -> bytes:
    return b""


def encode_supported(options: dict[str, list[str]]) -> bytes:
    parts = [_U16.pack(len(options))]
    for k, vs in options.items():
        parts += [_string(k), _string_list(list(vs))]
    return b"".join(parts)


def encode_authenticate(authenticator: str) -> bytes:
    return _string(authenticator)


def encode_auth_success(token: bytes | None = None) -> bytes:
    return _NULL if token is None else _I32.pack(len(token)) + token


def encode_error(err: CqlError, consistency: int = 1) -> bytes:
    """ERROR body: code, message and the code-specific fields (spec §9). Missing ``extra`` fields
    default to the request's consistency and zeros."""
    x = err.extra
    code = err.code
    body = [_I32.pack(code), _string(err.message)]
    cl = _U16.pack(int(x.get("consistency", consistency)))
    received = _I32.pack(int(x.get("received", 0)))
    blockfor = _I32.pack(int(x.get("blockfor", 1)))
    if code == ErrorCode.UNAVAILABLE:
        body += [cl, _I32.pack(int(x.get("required", 1))), _I32.pack(int(x.get("alive", 0)))]
    elif code == ErrorCode.WRITE_TIMEOUT:
        body += [cl, received, blockfor, _string(str(x.get("write_type", "SIMPLE")))]
    elif code == ErrorCode.READ_TIMEOUT:
        body += [cl, received, blockfor, bytes([1 if x.get("data_present") else 0])]
    elif code == ErrorCode.READ_FAILURE:
        body += [cl, received, blockfor, _I32.pack(int(x.get("numfailures", 1)))]
        body.append(bytes([1 if x.get("data_present") else 0]))
    elif code == ErrorCode.WRITE_FAILURE:
        body += [cl, received, blockfor, _I32.pack(int(x.get("numfailures", 1)))]
        body.append(_string(str(x.get("write_type", "SIMPLE"))))
    elif code == ErrorCode.FUNCTION_FAILURE:
        body += [_string(str(x.get("keyspace", ""))), _string(str(x.get("function", "")))]
        body.append(_string_list([str(a) for a in x.get("arg_types", [])]))
    elif code == ErrorCode.ALREADY_EXISTS:
        body += [_string(str(x.get("keyspace", ""))), _string(str(x.get("table", "")))]
    elif code == ErrorCode.UNPREPARED:
        body.append(_short_bytes(bytes(x.get("id", b""))))
    return b"".join(body)

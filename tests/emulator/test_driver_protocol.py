"""CQL native protocol v4 server against the real driver, with a scripted engine.

The engine here is a small stand-in (system.local/peers, an echo statement, paging, scripted
errors), so these tests pin down the protocol layer alone: handshake and downgrade, type
metadata for every CQL type, paging, batches, named values, errors with their bodies, events,
authentication, compression and malformed input. The real engine is covered by the other
test_driver_* files.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from cassandra import (
    AlreadyExists,
    ConsistencyLevel,
    FunctionFailure,
    InvalidRequest,
    ReadFailure,
    ReadTimeout,
    Unauthorized,
    Unavailable,
    WriteFailure,
    WriteTimeout,
)
from cassandra import cqltypes as CT
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.policies import FallthroughRetryPolicy, RoundRobinPolicy
from cassandra.protocol import (
    ConfigurationException,
    ErrorMessage,
    EventMessage,
    ExecuteMessage,
    IsBootstrappingErrorMessage,
    OptionsMessage,
    OverloadedErrorMessage,
    PrepareMessage,
    ProtocolException,
    QueryMessage,
    ReadyMessage,
    RegisterMessage,
    ResultMessage,
    ServerError,
    StartupMessage,
    SupportedMessage,
    SyntaxException,
    TruncateError,
    _ProtocolHandler,
)
from cassandra.protocol_features import ProtocolFeatures
from cassandra.query import BatchStatement, BatchType, SimpleStatement
from cassandra.util import Date, Duration, SortedSet, Time

from tests.scylla_emulator.api import (
    ColumnSpec,
    CqlError,
    ErrorCode,
    PreparedInfo,
    RowsResult,
    SchemaChangeResult,
    SetKeyspaceResult,
    VoidResult,
)
from tests.scylla_emulator.server import EmulatorServer

UDT = CT.UserType.make_udt_class("ks", "ut", ("a", "b"), (CT.Int32Type, CT.UTF8Type))
VECTOR = CT.lookup_casstype(
    "org.apache.cassandra.db.marshal.VectorType(org.apache.cassandra.db.marshal.FloatType, 3)"
)
ECHO_TYPES: list[tuple[str, Any, Any]] = [
    ("c_ascii", CT.AsciiType, "abc"),
    ("c_bigint", CT.LongType, -(2**63)),
    ("c_blob", CT.BytesType, b"\x00\xff"),
    ("c_boolean", CT.BooleanType, True),
    ("c_decimal", CT.DecimalType, Decimal("-12.345")),
    ("c_double", CT.DoubleType, 1.5),
    ("c_float", CT.FloatType, 0.25),
    ("c_int", CT.Int32Type, 2**31 - 1),
    ("c_timestamp", CT.DateType, datetime(2024, 5, 6, 7, 8, 9, 123000)),
    ("c_uuid", CT.UUIDType, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("c_text", CT.UTF8Type, "héllo"),
    ("c_varint", CT.IntegerType, 10**30),
    ("c_timeuuid", CT.TimeUUIDType, uuid.UUID("c3b851fe-6d0c-11ea-3f9b-422e11ed8da0")),
    ("c_inet", CT.InetAddressType, "10.0.0.1"),
    ("c_date", CT.SimpleDateType, Date(19000)),
    ("c_time", CT.TimeType, Time(3600 * 10**9 + 5)),
    ("c_smallint", CT.ShortType, -32768),
    ("c_tinyint", CT.ByteType, 127),
    ("c_duration", CT.DurationType, Duration(1, 2, 3)),
    ("c_list", CT.ListType.apply_parameters([CT.Int32Type]), [3, 1, 2]),
    ("c_set", CT.SetType.apply_parameters([CT.UTF8Type]), SortedSet(["a", "b"])),
    ("c_map", CT.MapType.apply_parameters([CT.UTF8Type, CT.Int32Type]), {"x": 1, "y": 2}),
    ("c_tuple", CT.TupleType.apply_parameters([CT.Int32Type, CT.UTF8Type]), (7, "seven")),
    ("c_udt", UDT, UDT.mapped_class(1, "one") if UDT.mapped_class else UDT.tuple_type(1, "one")),
    (
        "c_nested",
        CT.MapType.apply_parameters([CT.Int32Type, CT.ListType.apply_parameters([CT.UTF8Type])]),
        {1: ["a", "b"]},
    ),
    ("c_frozen", CT.FrozenType.apply_parameters([CT.ListType.apply_parameters([UDT])]), None),
    ("c_vector", VECTOR, [1.0, 2.0, 3.0]),
    ("c_null", CT.Int32Type, None),
]
HOST_ID = uuid.UUID("11111111-2222-3333-4444-555555555555")
SCHEMA_VERSION = uuid.UUID("66666666-7777-8888-9999-000000000000")
LOCAL = {
    "key": (CT.UTF8Type, "local"),
    "broadcast_address": (CT.InetAddressType, "127.0.0.1"),
    "cluster_name": (CT.UTF8Type, "emu"),
    "data_center": (CT.UTF8Type, "datacenter1"),
    "host_id": (CT.UUIDType, HOST_ID),
    "listen_address": (CT.InetAddressType, "127.0.0.1"),
    "partitioner": (CT.UTF8Type, "org.apache.cassandra.dht.Murmur3Partitioner"),
    "rack": (CT.UTF8Type, "rack1"),
    "release_version": (CT.UTF8Type, "3.0.8"),
    "rpc_address": (CT.InetAddressType, "127.0.0.1"),
    "schema_version": (CT.UUIDType, SCHEMA_VERSION),
    "tokens": (CT.SetType.apply_parameters([CT.UTF8Type]), SortedSet(["0"])),
}
ERRORS: dict[str, tuple[CqlError, type[BaseException]]] = {
    "unavailable": (CqlError(ErrorCode.UNAVAILABLE, "u", required=3, alive=1), Unavailable),
    "write_timeout": (
        CqlError(ErrorCode.WRITE_TIMEOUT, "w", received=1, blockfor=2, write_type="BATCH"), WriteTimeout
    ),
    "read_timeout": (
        CqlError(ErrorCode.READ_TIMEOUT, "r", received=0, blockfor=1, data_present=True), ReadTimeout
    ),
    "read_failure": (
        CqlError(ErrorCode.READ_FAILURE, "rf", received=0, blockfor=1, numfailures=2), ReadFailure
    ),
    "write_failure": (CqlError(ErrorCode.WRITE_FAILURE, "wf", numfailures=1, write_type="CAS"), WriteFailure),
    "function_failure": (
        CqlError(ErrorCode.FUNCTION_FAILURE, "ff", keyspace="ks", function="f", arg_types=["int", "text"]),
        FunctionFailure,
    ),
    "syntax": (CqlError(ErrorCode.SYNTAX_ERROR, "line 1:0 no viable alternative"), SyntaxException),
    "unauthorized": (CqlError(ErrorCode.UNAUTHORIZED, "no"), Unauthorized),
    "invalid": (CqlError(ErrorCode.INVALID, "bad"), InvalidRequest),
    "config": (CqlError(ErrorCode.CONFIG_ERROR, "cfg"), ConfigurationException),
    "already_exists": (CqlError(ErrorCode.ALREADY_EXISTS, "exists", keyspace="ks", table="t"), AlreadyExists),
    "server": (CqlError(ErrorCode.SERVER_ERROR, "boom"), ServerError),
    "overloaded": (CqlError(ErrorCode.OVERLOADED, "busy"), OverloadedErrorMessage),
    "bootstrapping": (CqlError(ErrorCode.IS_BOOTSTRAPPING, "booting"), IsBootstrappingErrorMessage),
    "truncate": (CqlError(ErrorCode.TRUNCATE_ERROR, "trunc"), TruncateError),
}  # fmt: skip


def _udt_value(t: Any, a: int, b: str) -> Any:
    return t.tuple_type(a, b) if hasattr(t, "tuple_type") else (a, b)


class FakeEngine:
    """A scripted engine: enough of system.local/peers for the driver, plus test statements."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.prepared: dict[bytes, PreparedInfo] = {}
        self.forget_next_execute = False
        self.lock = threading.Lock()

    def supported_options(self) -> dict[str, list[str]]:
        return {"CQL_VERSION": ["3.3.1"]}

    def execute(self, query: str, values: list[Any], *, keyspace: str | None, consistency: int,
                page_size: int | None, paging_state: bytes | None, timestamp: int | None,
                names: list[str] | None = None) -> Any:  # fmt: skip
        self.calls.append(("execute", (query, values, keyspace, consistency, page_size, timestamp, names)))
        q = query.strip().lower()
        if " from system.local" in q:
            sel = q[len("select") : q.index(" from")].strip()
            cols = list(LOCAL) if sel == "*" else [c.strip() for c in sel.split(",")]
            specs = [ColumnSpec("system", "local", c, LOCAL[c][0]) for c in cols]
            return RowsResult(specs, [[LOCAL[c][1] for c in cols]])
        if " from system.peers" in q:
            return RowsResult([ColumnSpec("system", "peers", "peer", CT.InetAddressType)], [])
        if q.startswith("raise "):
            raise ERRORS[q.split()[1]][0]
        if q.startswith("use "):
            return SetKeyspaceResult(q.split()[1])
        if q.startswith("count "):  # "count N": N rows, paged by the offset in paging_state
            total = int(q.split()[1])
            start = int.from_bytes(paging_state or b"\0", "big")
            end = min(total, start + (page_size or total))
            more = end.to_bytes(4, "big") if end < total else None
            return RowsResult(
                [ColumnSpec("ks", "t", "n", CT.Int32Type)], [[i] for i in range(start, end)], more
            )
        if q.startswith("create "):
            return SchemaChangeResult("CREATED", "TABLE", "ks", q.split()[-1].split(".")[-1])
        if q.startswith("echo"):  # values (by name if named) come back as one row of blobs
            cols = [
                ColumnSpec("ks", "echo", n, CT.BytesType)
                for n in (names or [f"v{i}" for i in range(len(values))])
            ]
            return RowsResult(cols, [[None if v is None else bytes(v) for v in values]])
        if q.startswith("keyspace"):
            return RowsResult([ColumnSpec("ks", "t", "ks", CT.UTF8Type)], [[keyspace]])
        return VoidResult()

    def prepare(self, query: str, *, keyspace: str | None) -> PreparedInfo:
        q = query.strip().lower()
        if q.startswith("raise "):
            raise ERRORS[q.split()[1]][0]
        if q.startswith("typed"):
            cols = [ColumnSpec("ks", "types", n, t) for n, t, _ in ECHO_TYPES]
            info = PreparedInfo(b"typed-id", cols, [0], cols)
        else:
            n = query.count("?")
            cols = [ColumnSpec("ks", "t", f"p{i}", CT.Int32Type) for i in range(n)]
            info = PreparedInfo(uuid.uuid5(uuid.NAMESPACE_OID, query).bytes, cols, [], None)
        self.prepared[info.id] = info
        return info

    def execute_prepared(self, prepared_id: bytes, values: list[Any], *, keyspace: str | None,
                         consistency: int, page_size: int | None, paging_state: bytes | None,
                         timestamp: int | None) -> Any:  # fmt: skip
        self.calls.append(("execute_prepared", (prepared_id, values, timestamp)))
        info = self.prepared.get(prepared_id)
        if info is None or self.forget_next_execute:
            self.forget_next_execute = False
            raise CqlError(ErrorCode.UNPREPARED, "unknown prepared id", id=prepared_id)
        if info.result_columns is None:
            return VoidResult()
        row = [
            None if v is None else c.cass_type.deserialize(v, 4)
            for c, v in zip(info.bind_columns, values, strict=True)
        ]
        return RowsResult(info.result_columns, [row])

    def batch(self, kind: int, statements: list[Any], *, keyspace: str | None, consistency: int,
              timestamp: int | None) -> Any:  # fmt: skip
        self.calls.append(("batch", (kind, statements, keyspace, consistency, timestamp)))
        return VoidResult()


@pytest.fixture
def fake() -> Iterator[EmulatorServer]:
    with EmulatorServer(engine=FakeEngine()) as server:
        yield server


def _cluster(server: EmulatorServer, **kw: Any) -> Cluster:
    profile = ExecutionProfile(
        load_balancing_policy=RoundRobinPolicy(), retry_policy=FallthroughRetryPolicy()
    )
    return Cluster(
        [server.host], port=server.port, schema_metadata_enabled=False,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile}, **kw,
    )  # fmt: skip


@pytest.fixture
def session(fake: EmulatorServer) -> Iterator[Any]:
    cluster = _cluster(fake)
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


# ------------------------------------------------------------------------------ raw client


class Raw:
    """A bare protocol client built from the driver's own message encoders/decoders."""

    def __init__(self, server: EmulatorServer) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=5)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: Any, stream: int = 1, version: int = 4) -> None:
        self.sock.sendall(_ProtocolHandler.encode_message(msg, stream, version, None, False, None))

    def send_raw(self, opcode: int, body: bytes, stream: int = 1, version: int = 4, flags: int = 0) -> None:
        self.sock.sendall(struct.pack(">BBhBi", version, flags, stream, opcode, len(body)) + body)

    def recv(self, result_metadata: Any = None) -> tuple[int, int, Any]:
        """(version, stream, decoded message) of the next frame."""
        head = self._read(9)
        vbyte, flags, stream, opcode, length = struct.unpack(">BBhBi", head)
        assert vbyte & 0x80, "response bit must be set"
        body = self._read(length)
        msg = _ProtocolHandler.decode_message(
            vbyte & 0x7F, ProtocolFeatures(), {}, stream, flags, opcode, body, None, result_metadata
        )
        return vbyte & 0x7F, stream, msg

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def start(self) -> None:
        self.send(StartupMessage(cqlversion="3.3.1", options={}))
        assert isinstance(self.recv()[2], ReadyMessage)


@pytest.fixture
def raw(fake: EmulatorServer) -> Iterator[Raw]:
    r = Raw(fake)
    try:
        yield r
    finally:
        r.close()


def _params(values: list[tuple[str, bytes]], flags: int = 0x01 | 0x40, consistency: int = 1) -> bytes:
    out = struct.pack(">HB", consistency, flags) + struct.pack(">H", len(values))
    for name, v in values:
        out += struct.pack(">H", len(name)) + name.encode() + struct.pack(">i", len(v)) + v
    return out


def _long_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">i", len(b)) + b


# ---------------------------------------------------------------------------------- tests


def test_default_cluster_downgrades_to_v4_and_connects(fake: EmulatorServer) -> None:
    cluster = Cluster([fake.host], port=fake.port, schema_metadata_enabled=False)
    try:
        session = cluster.connect()
        assert cluster.protocol_version == 4
        assert [r.n for r in session.execute("COUNT 3")] == [0, 1, 2]
        host = cluster.metadata.all_hosts()[0]
        assert host.host_id == HOST_ID
        assert host.sharding_info is not None and host.sharding_info.shards_count == 2
    finally:
        cluster.shutdown()


def test_connections_cover_every_shard_without_a_shard_aware_port() -> None:
    with EmulatorServer(engine=FakeEngine(), shards=4) as server:
        cluster = _cluster(server)
        try:
            session = cluster.connect()
            host = cluster.metadata.all_hosts()[0]
            pool = session._pools[host]
            for _ in range(200):  # the pool fills its shards in the background
                if len(pool._connections) == 4:
                    break
                threading.Event().wait(0.05)
            assert sorted(pool._connections) == [0, 1, 2, 3]
            assert session.execute("COUNT 1").one().n == 0
        finally:
            cluster.shutdown()


def test_every_cql_type_round_trips_through_prepared_metadata(session: Any) -> None:
    ps = session.prepare("TYPED")
    assert [c.name for c in ps.column_metadata] == [n for n, _, _ in ECHO_TYPES]
    assert ps.routing_key_indexes == [0]
    frozen_idx = [n for n, _, _ in ECHO_TYPES].index("c_frozen")
    frozen_val = [_udt_value(ps.column_metadata[frozen_idx].type.subtypes[0], 2, "two")]
    values = [frozen_val if n == "c_frozen" else v for n, _, v in ECHO_TYPES]
    row = session.execute(ps, values).one()
    for (name, _, _), sent in zip(ECHO_TYPES, values, strict=True):
        got = getattr(row, name)
        if name in ("c_udt", "c_frozen"):
            assert repr(got) == repr(sent), name
        else:
            assert got == sent, name
    assert isinstance(row.c_duration, Duration) and isinstance(row.c_set, SortedSet)


def test_paging_returns_every_row_once(session: Any) -> None:
    rs = session.execute(SimpleStatement("COUNT 2500", fetch_size=1000))
    assert [r.n for r in rs] == list(range(2500))
    first = session.execute(SimpleStatement("COUNT 2500", fetch_size=1000))
    assert first.has_more_pages and len(first.current_rows) == 1000


def test_use_keyspace_is_tracked_per_connection(fake: EmulatorServer) -> None:
    a, b = Raw(fake), Raw(fake)
    try:
        a.start()
        b.start()
        a.send(QueryMessage("USE ks1", ConsistencyLevel.ONE))
        assert a.recv()[2].new_keyspace == "ks1"
        a.send(QueryMessage("KEYSPACE", ConsistencyLevel.ONE))
        b.send(QueryMessage("KEYSPACE", ConsistencyLevel.ONE))
        assert a.recv()[2].parsed_rows == [("ks1",)]
        assert b.recv()[2].parsed_rows == [(None,)]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_surface_as_driver_exceptions(session: Any, name: str) -> None:
    err, exc_type = ERRORS[name]
    with pytest.raises(exc_type) as info:
        session.execute(f"RAISE {name}")
    exc = info.value
    if isinstance(exc, Unavailable):
        assert (exc.required_replicas, exc.alive_replicas, exc.consistency) == (
            3,
            1,
            ConsistencyLevel.LOCAL_ONE,
        )
    elif isinstance(exc, WriteTimeout):
        assert (exc.received_responses, exc.required_responses) == (1, 2)
    elif isinstance(exc, ReadTimeout):
        assert exc.data_retrieved is True
    elif isinstance(exc, ReadFailure | WriteFailure):
        assert exc.failures == err.extra["numfailures"]
    elif isinstance(exc, FunctionFailure):
        assert (exc.keyspace, exc.function, exc.arg_types) == ("ks", "f", ["int", "text"])
    elif isinstance(exc, AlreadyExists):
        assert (exc.keyspace, exc.table) == ("ks", "t")
    assert err.message in str(exc)


def test_error_from_prepare_and_unprepared_reprepare(fake: EmulatorServer, session: Any) -> None:
    with pytest.raises(InvalidRequest):
        session.prepare("RAISE invalid")
    ps = session.prepare("INSERT ? ?")
    fake.engine.forget_next_execute = True  # the next EXECUTE gets UNPREPARED with the id
    session.execute(ps, [1, 2])
    kinds = [c[0] for c in fake.engine.calls if c[0] == "execute_prepared"]
    assert kinds == ["execute_prepared", "execute_prepared"]  # re-prepared and retried


def test_batch_mixed_children_and_client_timestamp(fake: EmulatorServer, session: Any) -> None:
    ps = session.prepare("INSERT ? ?")
    batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=ConsistencyLevel.QUORUM)
    batch.add(SimpleStatement("INSERT simple"))
    batch.add(ps, (1, None))
    batch.add(SimpleStatement("INSERT %s"), (5,))
    session.execute(batch)
    kind, stmts, _, consistency, ts = next(c[1] for c in fake.engine.calls if c[0] == "batch")
    assert kind == 1 and consistency == ConsistencyLevel.QUORUM and isinstance(ts, int) and ts > 0
    assert stmts[0].query == "INSERT simple" and stmts[0].values == []
    assert stmts[1].prepared_id == ps.query_id and stmts[1].values == [struct.pack(">i", 1), None]
    assert stmts[2].query == "INSERT 5"


def test_named_values_in_query_execute_and_batch(fake: EmulatorServer, raw: Raw) -> None:
    raw.start()
    raw.send_raw(0x07, _long_string("ECHO") + _params([("b", b"\x02"), ("a", b"\x01")]))
    msg = raw.recv()[2]
    assert msg.column_names == ["b", "a"] and msg.parsed_rows == [(b"\x02", b"\x01")]
    raw.send(PrepareMessage("INSERT ? ?"))
    pid = raw.recv()[2].query_id
    body = struct.pack(">H", len(pid)) + pid + _params([("p1", b"\0\0\0\2"), ("p0", b"\0\0\0\1")])
    raw.send_raw(0x0A, body)
    assert isinstance(raw.recv()[2], ResultMessage)
    assert fake.engine.calls[-1][1][1] == [b"\0\0\0\1", b"\0\0\0\2"]  # reordered to marker order
    child = b"\x01" + struct.pack(">H", len(pid)) + pid + _params([("p1", b"B"), ("p0", b"A")])[3:]
    child += b"\x00" + _long_string("INSERT ?") + _params([("p0", b"C")])[3:]
    raw.send_raw(
        0x0D,
        b"\x00" + struct.pack(">H", 2) + child + struct.pack(">HB", 1, 0x40 | 0x20) + struct.pack(">q", 42),
    )
    assert isinstance(raw.recv()[2], ResultMessage)
    kind, stmts, _, _, ts = fake.engine.calls[-1][1]
    assert (kind, ts) == (0, 42)
    assert stmts[0].values == [b"A", b"B"] and stmts[1].values == [b"C"]


def test_skip_metadata_and_paging_state_flags(raw: Raw) -> None:
    raw.start()
    raw.send(PrepareMessage("TYPED"))
    prepared = raw.recv()[2]
    params: list[Any] = [None] * len(ECHO_TYPES)
    execute = ExecuteMessage(prepared.query_id, params, ConsistencyLevel.ONE, skip_meta=True)
    body = io.BytesIO()
    execute.send_body(body, 4, None)
    data = bytearray(body.getvalue())
    flags_at = 2 + len(prepared.query_id) + 2
    data[flags_at] |= 0x02  # the driver only sets skip_metadata with SCYLLA_USE_METADATA_ID
    raw.send_raw(0x0A, bytes(data))
    _, _, head = raw.recv(result_metadata=prepared.column_metadata)
    assert head.column_metadata is None  # NO_METADATA flag: columns count only
    assert head.parsed_rows == [(None,) * len(ECHO_TYPES)]
    raw.send(QueryMessage("COUNT 5", ConsistencyLevel.ONE, fetch_size=2))
    page = raw.recv()[2]
    assert page.paging_state is not None and len(page.parsed_rows) == 2
    raw.send(QueryMessage("COUNT 5", ConsistencyLevel.ONE, fetch_size=2, paging_state=page.paging_state))
    assert [r[0] for r in raw.recv()[2].parsed_rows] == [2, 3]


def test_schema_change_event_is_pushed_to_registered_connections(fake: EmulatorServer) -> None:
    listener, other, actor = Raw(fake), Raw(fake), Raw(fake)
    try:
        for r in (listener, other, actor):
            r.start()
        listener.send(RegisterMessage(["SCHEMA_CHANGE", "TOPOLOGY_CHANGE"]))
        assert isinstance(listener.recv()[2], ReadyMessage)
        actor.send(QueryMessage("CREATE TABLE ks.t2", ConsistencyLevel.ONE))
        result = actor.recv()[2]
        expected = {"target_type": "TABLE", "change_type": "CREATED", "keyspace": "ks", "table": "t2"}
        assert result.schema_change_event == expected
        _, stream, event = listener.recv()
        assert stream == -1 and isinstance(event, EventMessage)
        assert event.event_type == "SCHEMA_CHANGE" and event.event_args["table"] == "t2"
        other.send(OptionsMessage())  # the unregistered connection's next frame is its own answer
        assert isinstance(other.recv()[2], SupportedMessage)
    finally:
        for r in (listener, other, actor):
            r.close()


def test_supported_advertises_scylla_sharding(raw: Raw) -> None:
    raw.send(OptionsMessage())
    msg = raw.recv()[2]
    assert msg.cql_versions == ["3.3.1"]
    opts = msg.options
    assert opts["SCYLLA_NR_SHARDS"] == ["2"] and opts["SCYLLA_SHARD"][0] in ("0", "1")
    assert opts["SCYLLA_SHARDING_ALGORITHM"] == ["biased-token-round-robin"]
    assert opts["SCYLLA_SHARDING_IGNORE_MSB"] == ["12"] and "SCYLLA_SHARD_AWARE_PORT" not in opts
    assert opts["COMPRESSION"] == ["lz4"]


@pytest.mark.parametrize("compression", [True, False])
def test_compression_negotiation(fake: EmulatorServer, compression: bool) -> None:
    cluster = _cluster(fake, compression=compression)
    try:
        session = cluster.connect()
        assert [r.n for r in session.execute("COUNT 3000")] == list(range(3000))
        started = [c for c in fake._conns if c.started]  # pool connections may still be starting
        assert started and all(c.compress == compression for c in started)
    finally:
        cluster.shutdown()


def test_password_authenticator() -> None:
    with EmulatorServer(engine=FakeEngine(), credentials=("alice", "s3cret")) as server:
        good = _cluster(server, auth_provider=PlainTextAuthProvider("alice", "s3cret"))
        try:
            assert good.connect().execute("COUNT 1").one().n == 0
        finally:
            good.shutdown()
        bad = _cluster(server, auth_provider=PlainTextAuthProvider("alice", "nope"))
        try:
            with pytest.raises(NoHostAvailable, match="incorrect"):
                bad.connect()
        finally:
            bad.shutdown()
        anonymous = _cluster(server)
        try:
            with pytest.raises(NoHostAvailable, match="requires authentication"):
                anonymous.connect()
        finally:
            anonymous.shutdown()


@pytest.mark.parametrize("version", [3, 5, 6, 0x41, 0x42])
def test_other_protocol_versions_are_refused_readably(raw: Raw, version: int) -> None:
    raw.send_raw(0x05, b"", stream=7, version=version)
    got_version, stream, msg = raw.recv()
    assert got_version == (3 if version == 3 else 4) and stream == 7
    assert isinstance(msg, ProtocolException) and "unsupported protocol version" in msg.message
    assert raw.closed()


def test_malformed_requests_get_protocol_errors_and_the_connection_survives(raw: Raw) -> None:
    raw.send(QueryMessage("COUNT 1", ConsistencyLevel.ONE), stream=3)
    assert isinstance(raw.recv()[2], ProtocolException)  # before STARTUP
    raw.start()
    cases = [
        (0x07, b"\x00\x00\x00\x10abc"),  # long string longer than the body
        (0x07, _long_string("COUNT 1") + b"\x00\x01\x01\x00\x01"),  # values count, value truncated
        (0x07, _long_string("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"))),  # bad UTF-8
        (0x07, _long_string("COUNT 1") + b"\x00\x01\x00" + b"junk"),  # trailing bytes
        (0x0A, b"\x00\x04ab"),  # truncated prepared id
        (0x0D, b"\x07\x00\x00"),  # unknown batch type
        (0x0B, struct.pack(">H", 1) + struct.pack(">H", 5) + b"BOGUS"),  # unknown event
        (0x33, b""),  # unknown opcode
        (0x01, b""),  # STARTUP twice
    ]
    for stream, (opcode, body) in enumerate(cases, start=10):
        raw.send_raw(opcode, body, stream=stream)
        _, got_stream, msg = raw.recv()
        assert got_stream == stream and isinstance(msg, ProtocolException), (opcode, body, msg)
    raw.send_raw(0x07, _long_string("COUNT 1") + b"\x00\x01\x00", flags=0x01)  # not negotiated
    assert isinstance(raw.recv()[2], ProtocolException)
    raw.send(QueryMessage("COUNT 2", ConsistencyLevel.ONE), stream=99)
    _, stream, msg = raw.recv()
    assert stream == 99 and [r[0] for r in msg.parsed_rows] == [0, 1]


def test_oversized_frame_and_garbage_do_not_hurt_the_server(fake: EmulatorServer) -> None:
    big = Raw(fake)
    big.sock.sendall(struct.pack(">BBhBi", 4, 0, 1, 0x07, 2**30))
    assert isinstance(big.recv()[2], ProtocolException) and big.closed()
    big.close()
    for junk in (b"\x84\x00\x00\x01\x07\x00\x00\x00\x00", b"GET / HTTP/1.1\r\n\r\n", b"\x04"):
        s = socket.create_connection((fake.host, fake.port), timeout=5)
        s.sendall(junk)
        s.close()
    cluster = _cluster(fake)
    try:
        assert cluster.connect().execute("COUNT 1").one().n == 0
    finally:
        cluster.shutdown()


def test_engine_crash_becomes_server_error(fake: EmulatorServer, session: Any) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("engine bug")

    fake.engine.batch = boom
    with pytest.raises(ServerError, match="RuntimeError: engine bug"):
        session.execute(BatchStatement())
    assert session.execute("COUNT 1").one().n == 0


def test_result_timestamps_are_utc_naive_datetimes(session: Any) -> None:
    ps = session.prepare("TYPED")
    vals: list[Any] = [None] * len(ECHO_TYPES)
    vals[8] = datetime(2020, 1, 1, tzinfo=UTC)
    assert session.execute(ps, vals).one().c_timestamp == datetime(2020, 1, 1)


def test_error_message_type_for_unknown_code_is_readable() -> None:
    from tests.scylla_emulator import protocol as P

    body = P.encode_error(CqlError(ErrorCode.IS_BOOTSTRAPPING, "booting"))
    msg = ErrorMessage.recv_body(io.BytesIO(body), 4, ProtocolFeatures())
    assert msg.code == ErrorCode.IS_BOOTSTRAPPING and msg.message == "booting"


def test_pipelined_and_fragmented_frames(raw: Raw) -> None:
    raw.start()
    frames = b"".join(
        _ProtocolHandler.encode_message(
            QueryMessage(f"COUNT {n}", ConsistencyLevel.ONE), n, 4, None, False, None
        )
        for n in (1, 2, 3)
    )
    raw.sock.sendall(frames)  # three requests in one segment
    answers = [raw.recv() for _ in range(3)]
    assert [(s, len(m.parsed_rows)) for _, s, m in answers] == [(1, 1), (2, 2), (3, 3)]
    one = _ProtocolHandler.encode_message(
        QueryMessage("COUNT 4", ConsistencyLevel.ONE), 9, 4, None, False, None
    )
    for i in range(len(one)):  # one request, byte by byte
        raw.sock.sendall(one[i : i + 1])
    _, stream, msg = raw.recv()
    assert stream == 9 and len(msg.parsed_rows) == 4

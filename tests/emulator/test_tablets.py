"""Tablet keyspaces in the emulator, through the real driver, against shared/docs/scylla-cdc.md §4.2
and §4.5 (checked against scylladb ``cdc/generation.cc``, ``cdc/metadata.cc``, ``cdc/log.cc``,
``db/virtual_tables.cc``): ``system_schema.scylla_keyspaces``, ``system.cdc_timestamps`` /
``system.cdc_streams`` with their real types, one stream per tablet in the tablet id format, log
rows in the stream of the tablet owning the token, split/merge publishing a new set that closes
every old stream."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session
from cassandra.murmur3 import murmur3
from cassandra.protocol import ConfigurationException
from cassandra.query import dict_factory

from tests.scylla_emulator.server import EmulatorServer
from tests.scylla_emulator.tablets import tablet_last_tokens

REPL = "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}"


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    srv = EmulatorServer("127.0.0.1", 0, vnodes=8, shards=2, tablets=True, tablet_count=4)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def session(server: EmulatorServer) -> Iterator[Session]:
    cluster = Cluster([server.host], port=server.port, protocol_version=4)
    s = cluster.connect()
    s.row_factory = dict_factory
    try:
        yield s
    finally:
        cluster.shutdown()


_n = 0


def fresh_keyspace(session: Session, tablets: str | None = "") -> str:
    global _n
    _n += 1
    ks = f"tab{_n}"
    opt = "" if tablets == "" else f" AND tablets = {tablets}"
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {REPL}{opt}")
    return ks


def timestamps(session: Session, ks: str, t: str) -> list[datetime.datetime]:
    q = "SELECT timestamp FROM system.cdc_timestamps WHERE keyspace_name = %s AND table_name = %s"
    return [r["timestamp"] for r in session.execute(q, (ks, t))]


def streams(session: Session, ks: str, t: str, ts: datetime.datetime, state: int = 0) -> list[bytes]:
    q = (
        "SELECT stream_id FROM system.cdc_streams WHERE keyspace_name = %s AND table_name = %s "
        "AND timestamp = %s AND stream_state = %s"
    )
    return [r["stream_id"] for r in session.execute(q, (ks, t, ts, state))]


def token_of_int(v: int) -> int:
    return murmur3(v.to_bytes(4, "big", signed=True))


def test_scylla_keyspaces_tells_tablets_from_vnodes(session: Session) -> None:
    default = fresh_keyspace(session)  # --tablets: the default is tablets
    on = fresh_keyspace(session, "{'enabled':true}")  # no space after the colon (Scylla accepts it)
    sized = fresh_keyspace(session, "{'enabled': true, 'initial': 8}")
    off = fresh_keyspace(session, "{'enabled': false}")
    q = "SELECT * FROM system_schema.scylla_keyspaces WHERE keyspace_name = %s"
    assert session.execute(q, (default,)).one()["initial_tablets"] == 0
    assert session.execute(q, (on,)).one()["initial_tablets"] == 0
    assert session.execute(q, (sized,)).one()["initial_tablets"] == 8
    assert session.execute(q, (off,)).one()["initial_tablets"] is None


def test_virtual_table_columns_have_scyllas_types(session: Session) -> None:
    q = (
        "SELECT column_name, kind, type, clustering_order, position FROM system_schema.columns "
        "WHERE keyspace_name = 'system' AND table_name = %s"
    )
    ts = {
        r["column_name"]: (r["kind"], r["type"], r["clustering_order"], r["position"])
        for r in session.execute(q, ("cdc_timestamps",))
    }
    assert ts == {
        "keyspace_name": ("partition_key", "text", "none", 0),
        "table_name": ("partition_key", "text", "none", 1),
        "timestamp": ("clustering", "timestamp", "desc", 0),
    }
    st = {
        r["column_name"]: (r["kind"], r["type"], r["clustering_order"], r["position"])
        for r in session.execute(q, ("cdc_streams",))
    }
    assert st == {
        "keyspace_name": ("partition_key", "text", "none", 0),
        "table_name": ("partition_key", "text", "none", 1),
        "timestamp": ("clustering", "timestamp", "asc", 0),
        "stream_state": ("clustering", "tinyint", "asc", 1),
        "stream_id": ("clustering", "blob", "asc", 2),
    }


def test_one_stream_per_tablet_at_creation_minus_5s(session: Session) -> None:
    ks = fresh_keyspace(session)
    before = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    session.execute(f"CREATE TABLE {ks}.t (pk int PRIMARY KEY, v int) WITH cdc = {{'enabled': true}}")
    stamps = timestamps(session, ks, "t")
    assert len(stamps) == 1
    age = (before - stamps[0]).total_seconds()
    assert 4.0 <= age <= 5.5, age  # creation time - generation leeway (cdc/log.cc)
    current = streams(session, ks, "t", stamps[0], 0)
    assert sorted(current) == sorted(streams(session, ks, "t", stamps[0], 2))  # first set: all opened
    assert streams(session, ks, "t", stamps[0], 1) == []
    assert len(current) == 4
    toks = [int.from_bytes(s[:8], "big", signed=True) for s in current]
    assert sorted(toks) == tablet_last_tokens(4)  # the tablets' last tokens
    for s in current:
        low = int.from_bytes(s[8:], "big")
        assert low & 0xF == 1 and (low >> 4) & 0x3FFFFF == 0  # version 1, index 0
    # a table without CDC and a vnode keyspace's table have no stream set
    session.execute(f"CREATE TABLE {ks}.plain (pk int PRIMARY KEY)")
    assert timestamps(session, ks, "plain") == []
    vn = fresh_keyspace(session, "{'enabled': false}")
    session.execute(f"CREATE TABLE {vn}.t (pk int PRIMARY KEY) WITH cdc = {{'enabled': true}}")
    assert timestamps(session, vn, "t") == []


def test_tables_never_share_streams_and_rows_land_in_the_owning_tablet(session: Session) -> None:
    ks = fresh_keyspace(session)
    for t in ("a", "b"):
        session.execute(f"CREATE TABLE {ks}.{t} (pk int PRIMARY KEY, v int) WITH cdc = {{'enabled': true}}")
    sa = set(streams(session, ks, "a", timestamps(session, ks, "a")[0]))
    sb = set(streams(session, ks, "b", timestamps(session, ks, "b")[0]))
    assert not sa & sb
    for pk in range(50):
        session.execute(f"INSERT INTO {ks}.a (pk, v) VALUES (%s, %s)", (pk, pk))
    rows = list(session.execute(f'SELECT pk, "cdc$stream_id" FROM {ks}.a_scylla_cdc_log'))
    assert len(rows) == 50
    by_token = sorted(sa, key=lambda s: int.from_bytes(s[:8], "big", signed=True))
    for r in rows:
        tok = token_of_int(r["pk"])
        owner = next(s for s in by_token if int.from_bytes(s[:8], "big", signed=True) >= tok)
        assert r["cdc$stream_id"] == owner
    assert len({r["cdc$stream_id"] for r in rows}) == 4  # 50 keys hit all 4 tablets


def test_split_by_alter_closes_every_old_stream(session: Session) -> None:
    ks = fresh_keyspace(session)
    session.execute(f"CREATE TABLE {ks}.t (pk int PRIMARY KEY, v int) WITH cdc = {{'enabled': true}}")
    first = timestamps(session, ks, "t")[0]
    old = streams(session, ks, "t", first)
    session.execute(f"ALTER TABLE {ks}.t WITH tablets = {{'min_tablet_count': 8}}")
    stamps = timestamps(session, ks, "t")
    assert len(stamps) == 2 and stamps[1] == first  # CLUSTERING ORDER BY (timestamp DESC)
    new_ts = stamps[0]
    assert new_ts > first
    current = streams(session, ks, "t", new_ts, 0)
    assert len(current) == 8
    assert sorted(int.from_bytes(s[:8], "big", signed=True) for s in current) == tablet_last_tokens(8)
    assert sorted(streams(session, ks, "t", new_ts, 1)) == sorted(old)  # all old ones closed
    assert sorted(streams(session, ks, "t", new_ts, 2)) == sorted(current)  # all new ones opened
    # the library queries of §4.5
    q = (
        "SELECT stream_state, stream_id FROM system.cdc_streams WHERE keyspace_name = %s AND "
        "table_name = %s AND timestamp = %s AND stream_state >= 1 AND stream_state <= 2"
    )
    changed = list(session.execute(q, (ks, "t", new_ts)))
    assert sorted(r["stream_state"] for r in changed) == [1] * 4 + [2] * 8
    nxt = session.execute(
        "SELECT timestamp FROM system.cdc_timestamps WHERE keyspace_name = %s AND table_name = %s "
        "AND timestamp > %s ORDER BY timestamp ASC LIMIT 1",
        (ks, "t", first),
    ).one()
    assert nxt["timestamp"] == new_ts
    mn = session.execute(
        "SELECT min(timestamp) AS m FROM system.cdc_timestamps WHERE keyspace_name = %s AND table_name = %s "
        "AND timestamp > %s",
        (ks, "t", first),
    ).one()
    assert mn["m"] == new_ts
    # a write now uses the new set; merge back down to 2
    session.execute(f"INSERT INTO {ks}.t (pk, v) VALUES (1, 1)")
    assert (
        session.execute(f'SELECT "cdc$stream_id" FROM {ks}.t_scylla_cdc_log').one()["cdc$stream_id"]
        in current
    )
    session.execute(f"ALTER TABLE {ks}.t WITH tablets = {{'min_tablet_count': 2}}")
    stamps = timestamps(session, ks, "t")
    assert len(stamps) == 3
    assert len(streams(session, ks, "t", stamps[0], 0)) == 2
    assert sorted(streams(session, ks, "t", stamps[0], 1)) == sorted(current)
    # same count again: nothing to do
    session.execute(f"ALTER TABLE {ks}.t WITH tablets = {{'min_tablet_count': 2}}")
    assert len(timestamps(session, ks, "t")) == 3


def test_control_command_publishes_a_set_at_a_chosen_time(session: Session) -> None:
    ks = fresh_keyspace(session)
    session.execute(f"CREATE TABLE {ks}.t (pk int PRIMARY KEY, v int) WITH cdc = {{'enabled': true}}")
    first = timestamps(session, ks, "t")[0]
    old = set(streams(session, ks, "t", first))
    session.execute(
        "INSERT INTO emulator.control (command, value) VALUES (%s, %s)", (f"new_stream_set:{ks}.t:16", "2000")
    )
    new_ts = timestamps(session, ks, "t")[0]
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert 1.5 <= (new_ts - now).total_seconds() <= 2.1
    new = set(streams(session, ks, "t", new_ts))
    assert len(new) == 16 and not new & old
    # before the set starts, writes still go to the old streams; at its start to the new ones
    session.execute(f"INSERT INTO {ks}.t (pk, v) VALUES (7, 1)")
    ts_new = int(new_ts.replace(tzinfo=datetime.UTC).timestamp() * 1e6)
    session.execute(f"INSERT INTO {ks}.t (pk, v) VALUES (7, 2) USING TIMESTAMP {ts_new}")
    rows = {
        r["v"]: r["cdc$stream_id"]
        for r in session.execute(f'SELECT v, "cdc$stream_id" FROM {ks}.t_scylla_cdc_log')
    }
    assert rows[1] in old and rows[2] in new
    # same tablet count: new ids only (every stream still closed and reopened)
    session.execute(
        "INSERT INTO emulator.control (command, value) VALUES (%s, '0')", (f"new_stream_set:{ks}.t",)
    )
    last = timestamps(session, ks, "t")[0]
    assert len(streams(session, ks, "t", last, 1)) == 16 and len(streams(session, ks, "t", last, 2)) == 16
    with pytest.raises(InvalidRequest, match="not a CDC-enabled table of a tablet keyspace"):
        session.execute("INSERT INTO emulator.control (command, value) VALUES ('new_stream_set:nope.t', '0')")


def test_tablet_writes_only_check_the_future(session: Session) -> None:
    ks = fresh_keyspace(session)
    session.execute(f"CREATE TABLE {ks}.t (pk int PRIMARY KEY, v int) WITH cdc = {{'enabled': true}}")
    first = timestamps(session, ks, "t")[0]
    first_us = int(first.replace(tzinfo=datetime.UTC).timestamp() * 1e6)
    session.execute(f"INSERT INTO {ks}.t (pk, v) VALUES (1, 1) USING TIMESTAMP {first_us}")  # 5 s old: fine
    with pytest.raises(InvalidRequest, match="from the future"):
        session.execute(
            f"INSERT INTO {ks}.t (pk, v) VALUES (1, 1) USING TIMESTAMP {int((time.time() + 60) * 1e6)}"
        )
    with pytest.raises(Exception, match="could not find any CDC streams for table"):
        session.execute(f"INSERT INTO {ks}.t (pk, v) VALUES (1, 1) USING TIMESTAMP {first_us - 1000}")


def test_drop_and_disable(session: Session) -> None:
    ks = fresh_keyspace(session)
    session.execute(f"CREATE TABLE {ks}.t (pk int PRIMARY KEY, v int) WITH cdc = {{'enabled': true}}")
    session.execute(f"ALTER TABLE {ks}.t WITH cdc = {{'enabled': false}}")
    assert len(timestamps(session, ks, "t")) == 1  # the log table (and its streams) stay
    session.execute(f"ALTER TABLE {ks}.t WITH cdc = {{'enabled': true}}")
    assert len(timestamps(session, ks, "t")) == 1  # re-attached: same streams
    session.execute(f"DROP TABLE {ks}.t")
    assert timestamps(session, ks, "t") == []
    session.execute(f"CREATE TABLE {ks}.u (pk int PRIMARY KEY) WITH cdc = {{'enabled': true}}")
    session.execute(f"DROP KEYSPACE {ks}")
    assert timestamps(session, ks, "u") == []


def test_bad_tablet_options_are_refused(session: Session) -> None:
    ks = fresh_keyspace(session)
    session.execute(f"CREATE TABLE {ks}.t (pk int PRIMARY KEY) WITH cdc = {{'enabled': true}}")
    with pytest.raises(ConfigurationException, match="Invalid value '-1' for min_tablet_count"):
        session.execute(f"ALTER TABLE {ks}.t WITH tablets = {{'min_tablet_count': -1}}")
    with pytest.raises(ConfigurationException, match="Unknown tablet option"):
        session.execute(f"ALTER TABLE {ks}.t WITH tablets = {{'bogus': 1}}")
    vn = fresh_keyspace(session, "{'enabled': false}")
    with pytest.raises(
        ConfigurationException, match="tablet options cannot be used when tablets are disabled"
    ):
        session.execute(f"CREATE TABLE {vn}.t (pk int PRIMARY KEY) WITH tablets = {{'min_tablet_count': 2}}")


def test_tablet_count_from_table_and_keyspace_options(session: Session) -> None:
    ks = fresh_keyspace(session, "{'enabled': true, 'initial': 3}")  # rounded up to 4 tablets
    session.execute(f"CREATE TABLE {ks}.a (pk int PRIMARY KEY) WITH cdc = {{'enabled': true}}")
    session.execute(
        f"CREATE TABLE {ks}.b (pk int PRIMARY KEY) WITH cdc = {{'enabled': true}} AND tablets = {{'min_tablet_count': 5}}"
    )
    session.execute(
        f"CREATE TABLE {ks}.c (pk int PRIMARY KEY) WITH tablets = {{'min_tablet_count': 16, 'max_tablet_count': 12}}"
    )
    session.execute(f"ALTER TABLE {ks}.c WITH cdc = {{'enabled': true}}")  # the log (and streams) appear now
    counts = {t: len(streams(session, ks, t, timestamps(session, ks, t)[0])) for t in ("a", "b", "c")}
    assert counts == {"a": 4, "b": 8, "c": 8}

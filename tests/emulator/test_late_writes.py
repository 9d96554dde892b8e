"""``EmulatorServer.late_writes``: a write whose client timestamp reaches the emulator more than
0.5 s after the driver took it is counted and logged (such a write lands in the CDC log behind a
reader's confidence window); on-time writes, server-stamped writes and reads are not."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from cassandra.cluster import Cluster


def _session(emulator: Any, behind_s: float) -> tuple[Cluster, Any]:
    """A driver whose client timestamps run ``behind_s`` seconds behind the clock (a request
    stamped, then queued that long before the server reads it)."""
    cluster = Cluster(
        [emulator.host],
        port=emulator.port,
        protocol_version=4,
        timestamp_generator=lambda: int((time.time() - behind_s) * 1e6),
    )
    return cluster, cluster.connect()


def test_late_client_timestamps_are_counted_and_logged(
    emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    on_time, on_time_session = _session(emulator, 0.0)
    late, late_session = _session(emulator, 1.0)
    time.sleep(1.5)  # a write stamped before the first CDC generation began would be refused
    try:
        on_time_session.execute(
            "CREATE KEYSPACE lw WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        on_time_session.execute("CREATE TABLE lw.t (pk int PRIMARY KEY, v int) WITH cdc = {'enabled': true}")
        insert = on_time_session.prepare("INSERT INTO lw.t (pk, v) VALUES (?, ?)")
        on_time_session.execute(insert, (1, 1))
        late_session.execute("SELECT * FROM lw.t")  # a read: not a write
        late_session.use_client_timestamp = False
        late_session.execute("INSERT INTO lw.t (pk, v) VALUES (2, 2)")  # stamped by the server
        assert emulator.late_writes.count == 0
        late_session.use_client_timestamp = True
        with caplog.at_level(logging.WARNING, logger="tests.scylla_emulator.server"):
            late_session.execute(late_session.prepare("INSERT INTO lw.t (pk, v) VALUES (?, ?)"), (3, 3))
            late_session.execute("UPDATE lw.t SET v = 4 WHERE pk = 3")
        assert emulator.late_writes.count == 2
        assert 0.9e6 < emulator.late_writes.worst_us < 10e6
        said = [r.getMessage() for r in caplog.records if "late write" in r.getMessage()]
        assert len(said) == 1, said  # at most one line every 5 s
    finally:
        late.shutdown()
        on_time.shutdown()

"""``python -m tests.scylla_emulator``: prints its address, serves the real driver, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from cassandra.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]


def test_module_entry_point_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scylla_emulator", "--host", "127.0.0.1", "--port", "0",
         "--vnodes", "4"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:"), line
        port = int(line.rpartition(":")[2])
        cluster = Cluster(["127.0.0.1"], port=port, protocol_version=4)
        try:
            session = cluster.connect()
            assert len(cluster.metadata.token_map.ring) == 4
            assert session.execute("SELECT key FROM system.local").one().key == "local"
        finally:
            cluster.shutdown()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_module_entry_point_rejects_bad_arguments() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.scylla_emulator", "--user", "alice"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--user and --password go together" in proc.stderr

"""A ClickHouse endpoint that a test can kill and restart: ``tests.clickhouse_server`` (the real
chDB engine behind our HTTP front) in its own process, on a fixed port and data directory.

``ClickHouseProcess(data_dir, log_path=...)``: ``start()`` waits for ``/ping``; ``kill9()`` is the
honest outage (no shutdown, in-flight requests cut); ``start()`` again serves the same port and
directory: chDB keeps its MergeTree parts and the non-replicated insert deduplication log across a
``kill -9`` (checked by hand with a retried ``insert_deduplication_token``, and by the outage test
itself, which compares the restarted endpoint with the source). ``stop()`` is SIGTERM.
``query(sql)`` runs one statement over HTTP and returns the TabSeparated text.

Merges: a ReplacingMergeTree merge collapses rows of the same key, so a row stored twice would
vanish from the raw table. ``stop_merges()`` (``SYSTEM STOP MERGES``: every table that exists now)
and ``start(stop_merges=True)`` (the same, before the endpoint serves its first request; it does
not survive a restart) keep every stored row visible, so a test can count duplicates.

Crash at the worst moment: with ``crash_pattern`` (a regex on the INSERT's SQL),
``crash_after_insert()`` arms the endpoint so that the next matching INSERT of at least
``crash_min_rows`` rows is stored and then the
process ``kill -9``-s itself before answering. The client sees a cut connection for a batch the
server kept, and retries it after the restart; the log line returned names the insert and its
``insert_deduplication_token``.

Process entry point: ``python -m tests.e2e.ch_process --port P --path DIR [--stop-merges]
[--crash-pattern REGEX]`` (``SIGUSR1`` arms the crash).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.clickhouse_server import ClickHouseTestServer
from tests.e2e.harness import ROOT, free_port

__all__ = ["ClickHouseProcess", "main"]


class ClickHouseProcess:
    """One endpoint process at a time on ``port`` (a free one by default) and ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        log_path: Path,
        port: int | None = None,
        crash_pattern: str = "",
        crash_min_rows: int = 1,
    ) -> None:
        self.data_dir = data_dir
        self.crash_pattern = crash_pattern
        self.crash_min_rows = crash_min_rows
        self.log_path = log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, stop_merges: bool = False, timeout: float = 60.0) -> None:
        """Start the endpoint and wait until ``/ping`` answers (fails at once if it exits)."""
        assert not self.running(), "the ClickHouse endpoint is already running"
        self.starts += 1
        cmd = [sys.executable, "-m", "tests.e2e.ch_process", "--port", str(self.port),
               "--path", str(self.data_dir), *(["--stop-merges"] if stop_merges else []),
               *(["--crash-pattern", self.crash_pattern, "--crash-min-rows", str(self.crash_min_rows)]
                 if self.crash_pattern else [])]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"the ClickHouse endpoint exited:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError as exc:  # not listening yet
                last = exc
            time.sleep(0.05)
        raise AssertionError(
            f"ClickHouse endpoint not up within {timeout:.0f}s ({last!r}):\n{self.log_text()}"
        )

    def kill9(self) -> None:
        if self.proc is not None and self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def crash_after_insert(self, timeout: float = 30.0) -> str:
        """Arm the crash (``crash_pattern``), wait until the process is gone and return the log
        line naming the insert it stored before dying."""
        assert self.crash_pattern and self.running() and self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"no INSERT matching {self.crash_pattern!r} within {timeout}s") from None
        crashes = [
            ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.startswith("crash")
        ]
        assert crashes, f"the endpoint exited without the crash:\n{self.log_path.read_text(errors='replace')}"
        return crashes[-1]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the server's own shutdown); SIGKILL if it does not exit within ``timeout``."""
        if self.proc is not None and self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def query(self, sql: str, timeout: float = 30.0) -> str:
        """Run one statement; the result as TabSeparated text. HTTP errors raise."""
        req = urllib.request.Request(
            f"{self.url}/?{urllib.parse.urlencode({'query': sql})}", data=b"", method="POST"
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return str(r.read().decode())

    def stop_merges(self) -> None:
        """``SYSTEM STOP MERGES`` on every MergeTree table that exists now (until a restart)."""
        self.query("SYSTEM STOP MERGES")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    """``tests.clickhouse_server``'s endpoint, optionally with merges stopped before it serves."""
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.ch_process")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True, help="chDB data directory (kept across restarts)")
    ap.add_argument("--stop-merges", action="store_true", help="SYSTEM STOP MERGES before serving")
    ap.add_argument("--crash-pattern", default="", help="SIGUSR1: die after the next INSERT matching it")
    ap.add_argument("--crash-min-rows", type=int, default=1, help="... that stored at least this many rows")
    args = ap.parse_args(argv)
    os.makedirs(args.path, exist_ok=True)
    server = ClickHouseTestServer(args.path, args.host, args.port)  # bound, not serving yet
    engine = server._httpd.RequestHandlerClass.engine  # type: ignore[attr-defined]
    if args.stop_merges:
        with engine.lock:
            engine.conn.query("SYSTEM STOP MERGES", "TabSeparated")
    if args.crash_pattern:
        _crash_after_insert(engine, re.compile(args.crash_pattern), args.crash_min_rows)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    print(f"clickhouse test server listening on {server.url} (merges stopped: {args.stop_merges}) "
          f"at {time.strftime('%H:%M:%S')}", flush=True)  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _crash_after_insert(engine: Any, pattern: re.Pattern[str], min_rows: int) -> None:
    """Once SIGUSR1 arrived, the first INSERT whose SQL matches ``pattern`` and that stores at
    least ``min_rows`` rows runs, and then the process kills itself before the HTTP answer is
    sent."""
    armed = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: armed.set())
    run = engine.run

    def run_then_crash(sql: str, body: bytes, **kw: Any) -> Any:
        out = run(sql, body, **kw)
        if armed.is_set() and body and sql.lstrip()[:6].upper() == "INSERT" and pattern.search(sql):
            summary = out[1]
            if int(summary.get("written_rows") or 0) < min_rows:
                return out
            print(f"crash after insert: written_rows={summary.get('written_rows')} "
                  f"settings={kw.get('settings')} sql={sql[:120]!r}", flush=True)  # fmt: skip
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    engine.run = run_then_crash


if __name__ == "__main__":
    raise SystemExit(main())

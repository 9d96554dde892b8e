"""``bash deploy/demo.sh`` as a person runs it: in a terminal, watch /status, then press Ctrl-C.

The demo runs on a pseudo-terminal whose foreground process group is the script's (as in a shell),
and Ctrl-C is the byte ``\\x03`` typed into that terminal: the kernel sends SIGINT to the whole
foreground group, exactly as for a person. Expected: cdcd alone gets the interrupt, drains and
exits; only then do the helpers (traffic generator, Scylla emulator, Redis, PostgreSQL) stop; all
within 5 s, with no traceback, warning or error on the way, and no process left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import INSTALL_HINT, PG_BIN

ROOT = Path(__file__).resolve().parents[2]
NOISE = re.compile(r"Traceback|\b(WARNING|ERROR|CRITICAL)\b|\w+Warning\b|\w+Error\b")


class Terminal:
    """A pseudo-terminal running one command as its session's foreground process group."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.chunks: list[bytes] = []
        # setsid --ctty: a new session (the child is not a group leader, so no fork: proc.pid is
        # the command's), with the terminal on its stdin as controlling terminal.
        self.proc = subprocess.Popen(
            ["setsid", "--ctty", *cmd], cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave
        )
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave end is closed
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return b"".join(list(self.chunks)).decode(errors="replace")

    def ctrl_c(self) -> float:
        """Type Ctrl-C; the moment it was typed."""
        assert os.tcgetpgrp(self.master) == self.proc.pid, "the demo is not the terminal's foreground group"
        at = time.monotonic()
        os.write(self.master, b"\x03")
        return at

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.reader.join(timeout=5)
        os.close(self.master)


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, command line) of every process."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), fields[19], cmdline)
    return table


def _demo_processes(root_pid: int, workdir: Path) -> dict[int, tuple[str, str]]:
    """Descendants of the demo script, and anything running from its files (PostgreSQL, whose
    pg_ctl parent is gone): pid -> (start time, command line)."""
    table = _proc_table()
    found = {root_pid} | {pid for pid, (_, _, cmd) in table.items() if str(workdir) in cmd}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid: table[pid][1:] for pid in found if pid in table}


def _still_running(procs: dict[int, tuple[str, str]]) -> list[str]:
    left = []
    for pid, (started, cmd) in procs.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[19] == started and fields[0] != "Z":
            left.append(f"{pid} {cmd}")
    return left


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def _wait_for(what: str, timeout: float, check: Any, term: Terminal) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        assert term.proc.poll() is None, f"demo.sh exited ({term.proc.returncode}):\n{term.text()}"
        try:
            if result := check():
                return result
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s (last error: {last!r}); output:\n{term.text()}")


def _applied(status: Any) -> int:
    """Sum of every ``events_applied`` anywhere in the /status document."""
    if isinstance(status, dict):
        return sum(
            v if k == "events_applied" and isinstance(v, int) else _applied(v) for k, v in status.items()
        )
    if isinstance(status, list):
        return sum(_applied(v) for v in status)
    return 0


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The demo's TMPDIR: one the postgres user can enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="cdcd-demo-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_and_ctrl_c_stops_it_cleanly(workdir: Path) -> None:
    for binary in (shutil.which("redis-server"), PG_BIN / "initdb", shutil.which("setsid")):
        assert binary is not None and Path(binary).exists(), f"{binary} missing; {INSTALL_HINT}"
    env = {**os.environ, "CDCD_PYTHON": sys.executable, "TMPDIR": str(workdir)}
    env.pop("CDCD_ADMIN_TOKEN", None)
    term = Terminal(["bash", "deploy/demo.sh"], env)
    procs: dict[int, tuple[str, str]] = {}
    try:
        urls = _wait_for(
            "demo.sh prints its URLs", 60,
            lambda: dict(re.findall(r"^demo: (status|readiness|liveness|metrics) +(http://\S+)", term.text(), re.M)),
            term,
        )  # fmt: skip
        assert set(urls) == {"status", "readiness", "liveness", "metrics"}, term.text()
        port = int(urls["status"].rsplit(":", 1)[1].split("/")[0])
        token = re.search(r"^demo: admin token +(\S+)", term.text(), re.M)
        assert token and len(token.group(1)) >= 16, term.text()
        flush = re.search(r"^demo: flush +curl (.*)$", term.text(), re.M)
        assert flush and f"Bearer {token.group(1)}" in flush.group(1), term.text()
        assert f"http://127.0.0.1:{port}/admin/checkpoints/flush" in flush.group(1)

        # Replicating: events reach PostgreSQL; the printed admin call works with the printed token.
        _wait_for("events applied", 60, lambda: _applied(_get(urls["status"])) > 0, term)
        assert _get(urls["readiness"]) is not None
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/checkpoints/flush", method="POST",
            headers={"Authorization": f"Bearer {token.group(1)}"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["result"]["failed"] == 0
        dsn = re.search(r"^demo: PostgreSQL +(\S+)", term.text(), re.M)
        assert dsn, term.text()
        rows = subprocess.run(
            [str(PG_BIN / "psql"), dsn.group(1), "-Atc", "select count(*) from analytics.orders"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert int(rows.stdout) > 0

        procs = _demo_processes(term.proc.pid, workdir)
        names = " ".join(cmd for _, cmd in procs.values())
        for helper in ("redis-server", "tests.scylla_emulator", "-m cdcd run", "postgres"):
            assert helper in names, f"{helper} not found among the demo's processes: {names}"

        pressed = term.ctrl_c()
        try:
            code = term.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"demo.sh still running 5 s after Ctrl-C; output:\n{term.text()}") from None
        took = time.monotonic() - pressed
        term.reader.join(timeout=5)
        # Everything after the terminal's echo of the keystroke ("^C").
        full = term.text()
        assert "^C" in full, full
        after = full[full.index("^C") + 2 :]
        print(f"demo.sh exited {code} {took:.2f} s after Ctrl-C; output after it:\n{after}")

        assert code == 0, after
        noisy = []
        for raw in after.splitlines():
            line = raw.strip()
            try:
                level = json.loads(line).get("level") if line.startswith("{") else None
            except ValueError:
                level = None
            if level in ("warning", "error", "critical") or NOISE.search(line):
                noisy.append(line)
        assert not noisy, "after Ctrl-C:\n" + "\n".join(noisy)
        records = [json.loads(x) for x in after.splitlines() if x.strip().startswith("{")]
        messages = [r.get("message") for r in records]
        assert "shutting down: draining in-flight batches" in messages, after
        done = [r for r in records if r.get("message") == "shutdown complete"]
        assert len(done) == 1 and not done[0].get("abandoned"), after
        assert not any("abandon" in str(m) for m in messages), after

        left = _still_running(procs)
        assert not left, "left running after the demo: " + "; ".join(left)
        assert not list(workdir.glob("cdcd-demo.*")), "the demo's work directory was not removed"
    finally:
        term.close()
        for line in _still_running(procs):  # never leave a demo behind, whatever failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), 9)

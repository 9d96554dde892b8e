"""Replicas share the work through leases (R-50, R-04), end to end with real processes.

* Three ``cdcd run`` replicas on one configuration, a random workload, ``kill -9`` of a random
  replica every ~10 s (restarted at the next kill, so its groups must be taken over by the
  others through lease expiry, as on another machine) and a fourth replica added mid-way:
  PostgreSQL and ClickHouse equal the source, the tombstone history holds each delete once.
  Every live replica's ``/status`` is sampled twice a second: no group is ever claimed by two
  replicas at overlapping times (a lease from ``acquired_at`` to the sample's ``now``; a running
  branch outside a lease counts at its sample's ``now``); the groups of a killed replica run
  elsewhere within 30 s; the added replica holds groups within 30 s of its start. ``cdcd status``
  prints the cluster from Redis. Mid-run Redis restarts without persistence (leases,
  checkpoints, start floors gone): positions come from the destinations, nothing is lost.
* Live configuration: SIGHUP after adding a table to the file starts replicating it without a
  restart; a change of ``source.hosts`` and ``state.key_prefix`` is refused (logged, naming them)
  and the old configuration stays; ``POST /admin/reload`` does the same as SIGHUP.

The emulator runs in a process of its own here: four cdcd processes, the workload and the
sampler share two cores, and the emulator must not share the test's GIL with the sampler.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import pytest

from tests.e2e.compare import (
    assert_history_once,
    source_schema,
    wait_converged,
)
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.conftest import MakeCdcd, RedisServer
from tests.e2e.harness import ROOT, CdcdProcess, ConfigOptions, EmulatorProcess, TableSpec, wait_for
from tests.e2e.workload import Workload

ACTIVE = ("starting", "running", "retrying", "circuit-open", "draining")


@pytest.fixture
def emulator() -> Iterator[EmulatorProcess]:
    """The emulator in its own process (overrides the in-process one for this module)."""
    with EmulatorProcess(vnodes=8, shards=2) as emu:
        yield emu


@dataclass
class Claim:
    replica: str  # replica id (one per process)
    group: str
    start: float  # wall-clock seconds
    end: float
    lease: bool  # from a lease (else: a running branch outside any lease)


class Sampler:
    """Samples every live replica's /status twice a second in a thread of its own."""

    def __init__(self, procs: list[CdcdProcess]) -> None:
        self.procs = procs
        # (replica, group, epoch, acquired at) -> lease claim: epochs start again from 1 when
        # Redis restarts empty, so an epoch alone does not name one acquisition
        self.claims: dict[tuple[str, str, int, float], Claim] = {}
        self.points: list[Claim] = []  # running branches outside a lease
        self.seen: list[tuple[float, str, int, set[str]]] = []  # (time, replica, pid, groups held)
        self.samples = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(8)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._pool.shutdown(wait=False)

    @staticmethod
    def _get(proc: CdcdProcess) -> tuple[int, Any] | None:
        if not proc.running():
            return None
        try:
            pid = proc.pid
            with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/status", timeout=2) as r:
                return pid, json.loads(r.read())
        except Exception:
            return None  # starting, or being killed

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for got in self._pool.map(self._get, list(self.procs)):
                if got is not None and "leases" in got[1]:
                    self._record(*got)
            self._stop.wait(max(0.0, 0.5 - (time.monotonic() - started)))

    def _record(self, pid: int, body: Any) -> None:
        self.samples += 1
        rid, now = body["replica_id"], body["now"]
        held = set()
        for lease in body["leases"]:
            held.add(lease["group"])
            key = (rid, lease["group"], lease["epoch"], lease["acquired_at"])
            claim = self.claims.get(key)
            if claim is None:
                self.claims[key] = Claim(rid, lease["group"], lease["acquired_at"], now, True)
            else:
                claim.end = max(claim.end, now)
        for table in body["tables"].values():
            for dest in table["destinations"].values():
                for group, st in dest["groups"].items():
                    if st["state"] in ACTIVE and group not in held:
                        self.points.append(Claim(rid, group, now, now, False))
        self.seen.append((time.time(), rid, pid, held))

    def overlaps(self) -> list[str]:
        """Two replicas claiming one group at overlapping times."""
        out = []
        claims = [*self.claims.values(), *self.points]
        by_group: dict[str, list[Claim]] = {}
        for c in claims:
            by_group.setdefault(c.group, []).append(c)
        for group, cs in by_group.items():
            for i, a in enumerate(cs):
                for b in cs[i + 1 :]:
                    if a.replica != b.replica and a.start <= b.end and b.start <= a.end:
                        out.append(f"{group}: {a} and {b}")
        return out

    def holder_after(self, group: str, not_replica: str, since: float) -> float | None:
        """First time after ``since`` another replica's sample shows ``group`` held."""
        for t, rid, _, held in self.seen:
            if t >= since and rid != not_replica and group in held:
                return t
        return None

    def last_held(self, pid: int) -> tuple[str, set[str]] | None:
        for _, rid, p, held in reversed(self.seen):
            if p == pid:
                return rid, held
        return None

    def first_held(self, pid: int) -> float | None:
        for t, _, p, held in self.seen:
            if p == pid and held:
                return t
        return None


def _named(proc: CdcdProcess, i: int) -> CdcdProcess:
    """Each replica its own name, as on separate machines: only a restarted process of the same
    replica takes its predecessor's leases over before they expire (cdcd.app.leases)."""
    text = proc.config.read_text()
    proc.config.write_text(text.replace('replica = "e2e"', f'replica = "e2e-{i}"', 1))
    return proc


def _cluster(proc: CdcdProcess) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "cdcd", "status", "--config", str(proc.config), "--json"],
        cwd=ROOT, env=proc.env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture
def redis_url(private_redis: RedisServer) -> str:
    """This module's tests get a Redis of their own (the chaos test restarts it empty)."""
    return private_redis.url


@pytest.mark.slow  # ~100 s; part of the default run
async def test_replicas_share_groups_through_kills_and_a_new_replica(  # noqa: PLR0917
    emulator: EmulatorProcess,
    cql: Any,
    make_cdcd: MakeCdcd,
    pg_dsn: str,
    clickhouse_url: str,
    ch_database: str,
    private_redis: RedisServer,
) -> None:
    workload = Workload(cql, "chaos.t", seed=1234, partitions=50, rows_per_partition=30)
    workload.create()
    target = f"{ch_database}.t"
    options = ConfigOptions(
        confidence_window="3s", batch_max_rows=300, checkpoint_every=300, checkpoint_interval="500ms",
        extra={"destinations": f'\n[destinations.ch]\ntype = "clickhouse"\nurl = "{clickhouse_url}"\n'},
    )  # fmt: skip
    spec = [TableSpec("chaos.t", target, delete="tombstone", destinations=("pg", "ch"))]
    procs = [_named(make_cdcd(spec, options), i) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.wait_ready, 90)
    sampler = Sampler(procs)
    sampler.start()
    rng = random.Random(77)
    try:
        # every group is leased, and spread: nobody holds more than its share of 8 groups
        def spread() -> bool:
            held = [len(p.status()["leases"]) for p in procs]
            return sum(held) == 8 and max(held) <= 3

        await asyncio.to_thread(wait_for, spread, 45, "8 groups spread over 3 replicas", 0.5)
        cluster = await asyncio.to_thread(_cluster, procs[0])
        assert len(cluster["replicas"]) == 3 and len(cluster["groups"]) == 8, cluster
        assert not cluster["unowned"] and all(r["config_matches"] for r in cluster["replicas"].values())
        assert {g["owner"] for g in cluster["groups"]} == set(cluster["replicas"])

        changes, chunk, seconds = 10_000, 400, 55.0

        def paced() -> int:
            done, started = 0, time.monotonic()
            while done < changes:
                done += workload.run(chunk, chunk=chunk).changes
                ahead = started + seconds * done / changes - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            return done

        writer = asyncio.create_task(asyncio.to_thread(paced))
        kills: list[tuple[float, str, set[str]]] = []  # (wall time, replica id, groups it held)
        dead: CdcdProcess | None = None  # the last victim, restarted at the next kill
        added: CdcdProcess | None = None
        added_at = 0.0
        redis_restarted, restarted_at = False, 0.0
        began = time.monotonic()
        while not writer.done():
            await asyncio.wait({writer}, timeout=rng.uniform(8.0, 12.0))
            if writer.done():
                break
            if added is None and time.monotonic() - began > 18:
                added = _named(make_cdcd(spec, options), 3)
                added_at = time.time()
                added.start()
                procs.append(added)
            victim = rng.choice([p for p in procs if p.running() and p is not added])
            last = sampler.last_held(victim.pid)
            victim.kill9()
            if last is not None:
                kills.append((time.time(), last[0], last[1]))
            if dead is not None:
                dead.start()  # dead for ~10 s: the others took its groups over meanwhile
            dead = victim
            if len(kills) == 2 and not redis_restarted:
                # Redis restarts without persistence: leases, checkpoints and start floors are
                # gone; the replicas stop their groups, take leases again once Redis answers, and
                # resume from the positions the destinations recorded
                await asyncio.to_thread(private_redis.stop)
                await asyncio.to_thread(private_redis.start)
                redis_restarted, restarted_at = True, time.time()
        if dead is not None:
            dead.start()
        assert (await writer) >= changes
        assert len(kills) >= 3 and added is not None and redis_restarted

        def alive() -> None:
            for p in procs:
                assert p.running(), f"cdcd exited ({p.exit_code()}):\n{p.log_tail()}"

        schema = source_schema(cql, "chaos.t")
        try:
            snap = await wait_converged(cql, schema, pg_dsn, target, timeout=150, alive=alive)
        except AssertionError as exc:  # a write later than the confidence window is not cdcd's fault
            raise AssertionError(f"{exc}\nemulator: {emulator.late_writes() or 'no late writes'}") from None
        u = urlsplit(clickhouse_url)
        client = clickhouse_connect.get_client(host=u.hostname, port=u.port, autogenerate_session_id=False)
        try:
            chs = await wait_ch_converged(cql, schema, client, target, timeout=150, alive=alive)
        finally:
            client.close()
        assert len(snap.rows) > 100 and len(chs.rows) == len(snap.rows)

        try:
            assert await assert_history_once(cql, "chaos.t", pg_dsn, target) > 300
        except AssertionError as exc:
            events = [
                f"kills (wall time, replica, groups): {kills}",
                f"redis restarted at {restarted_at:.3f}",
            ]
            raise AssertionError(
                f"{exc}\n" + "\n".join(events) + f"\nemulator: {emulator.late_writes() or 'no late writes'}"
            ) from None
    finally:
        sampler.stop()

    # the samples: no group twice at once; takeovers and the new replica within 30 s
    assert sampler.samples > 100
    overlaps = sampler.overlaps()
    assert not overlaps, "\n".join(overlaps[:10])
    takeovers = []
    for i, (when, rid, groups) in enumerate(kills):
        for group in groups:
            at = sampler.holder_after(group, rid, when)
            assert at is not None, f"{group} of killed {rid} never ran elsewhere"
            # the second kill is followed by the Redis restart: no replica takes a free lease for
            # one lease TTL (10 s) after Redis came back, as a holder may not have noticed yet
            takeovers.append(at - when - (10.0 if i == 1 else 0.0))
    assert takeovers and max(takeovers) <= 30, takeovers
    first = sampler.first_held(added.pid)  # (never a victim: its first process is still running)
    assert first is not None and first - added_at <= 30, first
    for p in procs:
        assert p.stop() == 0, p.log_tail()
        assert not [m for m in p.log_messages() if "dead-letter" in m.get("message", "")]
    print(
        f"\nkills={len(kills)} takeover seconds max={max(takeovers):.1f} "
        f"new replica first lease after {(first or 0) - added_at:.1f}s samples={sampler.samples}"
    )


def _add_admin_token(path: Path) -> None:
    text = path.read_text().replace("[http]\n", '[http]\nadmin_token = "${E2E_ADMIN_TOKEN}"\n', 1)
    path.write_text(text)


def _post(proc: CdcdProcess, path: str, token: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{proc.http_port}{path}",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


@pytest.mark.slow  # ~30 s
async def test_sighup_adds_a_table_and_refuses_non_live_changes(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str
) -> None:
    first = Workload(cql, "live.a", seed=1, partitions=10, rows_per_partition=10)
    first.create()
    second = Workload(cql, "live.b", seed=2, partitions=10, rows_per_partition=10)
    second.create(keyspace=False)
    token = "e2e-admin-token"
    cdcd = make_cdcd([TableSpec("live.a", "dst.a")], env={"E2E_ADMIN_TOKEN": token})
    _add_admin_token(cdcd.config)
    original = cdcd.config.read_text()
    cdcd.start()
    cdcd.wait_ready()
    fingerprint = cdcd.status()["config_fingerprint"]
    first.run(300)

    # SIGHUP with live.b added: it is replicated without a restart
    cdcd.config.write_text(
        original + '\n[[tables]]\nsource = "live.b"\ndestinations = ["pg"]\ntarget = "dst.b"\n'
    )
    assert cdcd.proc is not None
    cdcd.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "live.b" in cdcd.status()["tables"], 60, "live.b replicated after SIGHUP", 0.5)
    second.run(500)
    first.run(200)
    await wait_converged(cql, source_schema(cql, "live.a"), pg_dsn, "dst.a", timeout=60)
    snap = await wait_converged(cql, source_schema(cql, "live.b"), pg_dsn, "dst.b", timeout=60)
    assert snap.rows
    assert cdcd.status()["config_fingerprint"] != fingerprint
    assert [m for m in cdcd.log_messages() if m.get("message") == "configuration reloaded"]

    # non-live keys: refused, named in the log, the old configuration stays in force
    applied = cdcd.config.read_text()
    port = applied.split('hosts = ["', 1)[1].split('"', 1)[0].rsplit(":", 1)[1]
    changed = applied.replace('hosts = ["', f'hosts = ["127.0.0.9:{port}", "', 1)
    changed = changed.replace('key_prefix = "', 'key_prefix = "other', 1)
    cdcd.config.write_text(changed)
    cdcd.proc.send_signal(signal.SIGHUP)

    def refused() -> list[Any]:
        return [
            m for m in cdcd.log_messages() if m.get("message", "").startswith("configuration reload refused")
        ]

    wait_for(lambda: bool(refused()), 30, "refusal logged")
    assert refused()[0]["refused"] == ["source.hosts", "state.key_prefix"]
    fp = cdcd.status()["config_fingerprint"]
    second.run(200)
    await wait_converged(cql, source_schema(cql, "live.b"), pg_dsn, "dst.b", timeout=60)

    # the same through the admin API: refused, then applied once the file is good again
    code, body = _post(cdcd, "/admin/reload", token)
    assert code == 200 and body["result"]["result"] == "refused"
    cdcd.config.write_text(applied.replace("max_rows = 1000", "max_rows = 200"))
    code, body = _post(cdcd, "/admin/reload", token)
    assert body["result"]["result"] == "applied", body
    assert body["result"]["changes"] == ["pipeline.batch.max_rows"]
    assert cdcd.status()["config_fingerprint"] not in (fp, fingerprint)
    first.run(200)
    await wait_converged(cql, source_schema(cql, "live.a"), pg_dsn, "dst.a", timeout=60)
    assert cdcd.stop() == 0, cdcd.log_tail()
    assert [
        m for m in cdcd.errors() if not m.get("message", "").startswith("configuration reload refused")
    ] == []

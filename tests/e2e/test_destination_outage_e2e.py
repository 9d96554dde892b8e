"""R-13 end to end: one ``cdcd run`` replicates a steady workload (inserts, updates, deletes,
collection deltas, static columns) into PostgreSQL and ClickHouse; the ClickHouse endpoint is
killed for 30 s mid-workload and restarted on the same port and data directory.

* The outage begins with a ``kill -9`` of the endpoint right after it stored an insert of cdcd's
  and before it answered (``ch_process.py``), so cdcd retries, after the restart, a batch that
  ClickHouse already holds.
* During the outage PostgreSQL keeps up: its lag (``/status`` and ``cdcd_replication_lag_seconds``)
  stays low, it keeps applying, and with the writer paused for a moment mid-outage it equals the
  source. ClickHouse applies nothing, ``/status`` shows it ``retrying`` behind an open circuit
  breaker, its lag (and so its time until data loss) grows with the outage, ``/readyz`` names it.
* After the restart ClickHouse catches up from its own checkpoint (lag back down); once the writer
  stops both destinations equal the source field by field (``FINAL`` for ClickHouse).
* Nothing is stored twice: ClickHouse merges are stopped for the whole test, so a change stored
  twice (the retried batch above included) would stay visible as two raw rows with the same key
  and ``_cdc_version``. Nothing is dead-lettered, nothing logged as an error, cdcd exits 0 on
  SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from tests.e2e.ch_process import ClickHouseProcess
from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.compare_ch import wait_ch_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import CdcdProcess, ConfigOptions, TableSpec
from tests.e2e.workload import Result, Workload

SOURCE = "outage.t"
TARGET = "outage.t"  # PostgreSQL schema.table = ClickHouse database.table
RATE = 200  # changes/s written to the source for the whole test
BEFORE = 8.0  # s of writing before the outage
OUTAGE = 30.0  # s the ClickHouse endpoint is down
AFTER = 5.0  # s of writing once ClickHouse has caught up
# Functional bounds, not timings. cdcd reads with a 1 s confidence window (harness config) and
# writes 1 s batches (below), so a destination that keeps up sits at ~1-3 s of lag; 10 s leaves
# room for a loaded 2-core machine. A destination held back by the dead one would instead grow
# towards the 30 s of the outage, as ClickHouse's lag does.
PG_LAG_MAX = 10.0
CH_LAG_MIN = 20.0  # ClickHouse applies nothing for 30 s: its lag must show it
CAUGHT_UP = 5.0  # ClickHouse lag back below this after the restart = caught up
DOWN_STATES = ("retrying", "circuit-open")


class SteadyWriter(threading.Thread):
    """``Workload.run`` in small chunks at about ``rate`` changes/s until ``finish()``;
    ``pause()`` returns once no statement is in flight, ``resume()`` goes on."""

    def __init__(self, workload: Workload, rate: int = RATE, tick: float = 0.25) -> None:
        super().__init__(name="steady-writer", daemon=True)
        self.workload = workload
        self.per_tick = max(1, int(rate * tick))
        self.tick = tick
        self.result = Result()
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._pause = threading.Event()
        self._idle = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                if self._pause.is_set():
                    self._idle.set()
                    self._halt.wait(0.02)
                    continue
                began = time.monotonic()
                self.workload.run(self.per_tick, chunk=self.per_tick, concurrency=8, result=self.result)
                self._halt.wait(max(0.0, self.tick - (time.monotonic() - began)))
        except BaseException as exc:
            self.error = exc

    def pause(self) -> None:
        self._idle.clear()
        self._pause.set()
        assert self._idle.wait(30), "the writer did not pause"

    def resume(self) -> None:
        self._pause.clear()

    def halt(self) -> None:
        self._halt.set()

    def finish(self) -> Result:
        self._halt.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the workload writer did not stop"
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class Sample:
    """One ``/status`` poll, per destination ("pg", "ch")."""

    t: float  # seconds since the outage began (negative before)
    phase: str  # before, outage, catch-up, after
    lag: dict[str, float | None]
    state: dict[str, str]
    applied: dict[str, int]
    retries: dict[str, int]
    until_loss: dict[str, float | None]
    errors: dict[str, list[str]]


def _sample(cdcd: CdcdProcess, t: float, phase: str) -> Sample:
    dests = cdcd.status()["tables"][SOURCE]["destinations"]
    groups = {d: v["groups"].values() for d, v in dests.items()}
    return Sample(
        t=round(t, 1),
        phase=phase,
        lag={d: v["lag_seconds"] for d, v in dests.items()},
        state={d: v["state"] for d, v in dests.items()},
        applied={d: v["events_applied"] for d, v in dests.items()},
        retries={d: sum(g["write_retries"] for g in gs) for d, gs in groups.items()},
        until_loss={d: v["time_until_data_loss_seconds"] for d, v in dests.items()},
        errors={d: sorted({g["last_error"] for g in gs if g["last_error"]}) for d, gs in groups.items()},
    )


def _metric_lags(cdcd: CdcdProcess) -> dict[str, float]:
    """``cdcd_replication_lag_seconds`` of the table per destination, from ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{cdcd.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for m in re.finditer(r"^cdcd_replication_lag_seconds\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("table") == SOURCE:
            out[labels["destination"]] = float(m.group(2))
    return out


def _alive(cdcd: CdcdProcess, writer: SteadyWriter | None = None) -> None:
    assert cdcd.running(), f"cdcd exited ({cdcd.exit_code()}):\n{cdcd.log_tail()}"
    assert writer is None or writer.error is None, f"the workload writer failed: {writer.error!r}"


@pytest.mark.slow  # ~60 s; part of the default run
async def test_clickhouse_down_30s_postgres_keeps_up_clickhouse_catches_up(
    cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, tmp_path: Path
) -> None:
    # Our own endpoint: the session-wide one must not be stopped. The crash that starts the
    # outage comes right after it stored an insert of several rows into the main table.
    ch = ClickHouseProcess(
        tmp_path / "ch-data",
        log_path=tmp_path / "clickhouse.log",
        crash_pattern=r"`outage`\.`t`\s*\(",
        crash_min_rows=4,  # a batch of several keys: some read back, some written blind
    )
    ch.start()
    try:
        await _outage(cql, make_cdcd, pg_dsn, ch)
    finally:
        ch.kill9()


async def _outage(cql: Any, make_cdcd: MakeCdcd, pg_dsn: str, ch: ClickHouseProcess) -> None:
    workload = Workload(cql, SOURCE, seed=1313, partitions=40, rows_per_partition=40)
    workload.create()
    schema = source_schema(cql, SOURCE)
    destinations = f'\n[destinations.ch]\ntype = "clickhouse"\nurl = "{ch.url}"\n'
    cdcd = make_cdcd(
        [TableSpec(SOURCE, TARGET, destinations=("pg", "ch"))],
        ConfigOptions(
            batch_max_wait="1s",  # batches of a few dozen changes, few ClickHouse parts
            # The breaker opens after 5 failed writes and then lets one trial write through per
            # reset_timeout: 3 s (default 30 s) keeps the catch-up after the restart short.
            extra={"destinations": destinations, "pipeline": 'breaker.reset_timeout = "3s"'},
        ),
    )
    writer = SteadyWriter(workload)
    samples: list[Sample] = []
    phase = "before"
    began = time.monotonic() + BEFORE  # the outage start; set for real below

    async def sampler() -> None:
        while True:
            started = time.monotonic()
            samples.append(await asyncio.to_thread(_sample, cdcd, started - began, phase))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    cdcd.start()
    cdcd.wait_ready()
    ch.stop_merges()  # cdcd created outage.t and outage.t_static before /readyz said ready
    writer.start()
    sampling = asyncio.create_task(sampler())
    try:
        await asyncio.sleep(BEFORE)
        _alive(cdcd, writer)

        # ---- outage: the endpoint dies right after storing an insert, before answering ---------
        crash = await asyncio.to_thread(ch.crash_after_insert, 15.0)
        began, phase = time.monotonic(), "outage"
        await asyncio.sleep(OUTAGE / 2)
        # Mid-outage: with the writer paused, PostgreSQL equals the source while ClickHouse is down.
        writer.pause()
        paused = time.monotonic()
        await wait_converged(cql, schema, pg_dsn, TARGET, timeout=20, alive=lambda: _alive(cdcd, writer))
        pg_converged_in = time.monotonic() - paused
        writer.resume()
        mid = len(samples)
        readyz = [await asyncio.to_thread(cdcd.get, "/readyz")]
        await asyncio.sleep(max(0.0, began + OUTAGE - 2 - time.monotonic()))
        readyz.append(await asyncio.to_thread(cdcd.get, "/readyz"))
        metric_lags = await asyncio.to_thread(_metric_lags, cdcd)
        await asyncio.sleep(max(0.0, began + OUTAGE - time.monotonic()))

        # ---- restart on the same port and data directory, merges still stopped -------------------
        await asyncio.to_thread(ch.start, stop_merges=True)
        restarted, phase = time.monotonic(), "catch-up"
        while True:
            _alive(cdcd, writer)
            assert not sampling.done(), f"the /status sampler stopped: {sampling.exception()!r}"
            s = samples[-1]
            if s.phase == "catch-up" and s.lag["ch"] is not None and s.lag["ch"] < CAUGHT_UP:
                break
            assert time.monotonic() - restarted < 90, f"ClickHouse did not catch up: {samples[-5:]}"
            await asyncio.sleep(0.2)
        caught_up_in = time.monotonic() - restarted
        phase = "after"
        await asyncio.sleep(AFTER)
        assert not sampling.done(), f"the /status sampler stopped: {sampling.exception()!r}"
        result = writer.finish()
    finally:
        sampling.cancel()
        writer.halt()  # on a failure above: stop writing, keep the original error

    # ---- the outage as /status, /metrics and /readyz showed it ----------------------------------
    outage = [s for s in samples if s.phase == "outage"]
    assert len(outage) >= OUTAGE * 0.6, f"only {len(outage)} /status polls during the outage"
    pg_lags = [s.lag["pg"] for s in outage]
    assert all(lag is not None and lag < PG_LAG_MAX for lag in pg_lags), f"PostgreSQL held back: {pg_lags}"
    assert all(s.state["pg"] == "running" for s in outage), [s.state for s in outage]
    ch_lag_max = max(s.lag["ch"] or 0.0 for s in outage)
    assert ch_lag_max > CH_LAG_MIN, f"ClickHouse lag during the outage: {[s.lag['ch'] for s in outage]}"
    assert metric_lags["ch"] > CH_LAG_MIN and metric_lags["pg"] < PG_LAG_MAX, metric_lags
    settled = [s for s in outage if s.t >= 3.0]  # the first failed writes take a moment
    assert all(s.state["ch"] in DOWN_STATES for s in settled), [s.state for s in settled]
    assert any(s.state["ch"] == "circuit-open" for s in settled), [s.state for s in settled]
    assert settled[-1].errors["ch"] and not settled[-1].errors["pg"], settled[-1].errors
    # ClickHouse stored nothing while down; PostgreSQL kept applying in both halves.
    assert outage[0].applied["ch"] == outage[-1].applied["ch"], [s.applied for s in outage]
    assert outage[-1].retries["ch"] > 0 and outage[-1].retries["pg"] == 0, outage[-1].retries
    halves = [s for s in outage if samples.index(s) < mid], [s for s in outage if samples.index(s) >= mid]
    for half in halves:
        assert half[-1].applied["pg"] > half[0].applied["pg"], [s.applied for s in half]
    # The CDC log TTL minus the lag: ClickHouse's horizon shrank by its lag, PostgreSQL's did not.
    loss = outage[-1].until_loss
    assert loss["pg"] is not None and loss["ch"] is not None, loss
    assert loss["ch"] < loss["pg"] - (CH_LAG_MIN - PG_LAG_MAX), loss
    for code, body in readyz:
        assert code == 503 and body["checks"]["destination:pg"]["ok"], body
        assert not body["checks"]["destination:ch"]["ok"], body
    # PostgreSQL stayed low after the restart too; ClickHouse stays caught up.
    rest = [s for s in samples if s.phase in ("catch-up", "after")]
    assert all(s.lag["pg"] is not None and s.lag["pg"] < PG_LAG_MAX for s in rest), rest
    after = [s for s in samples if s.phase == "after"]
    assert after and all(s.state["ch"] == "running" and (s.lag["ch"] or 0) < PG_LAG_MAX for s in after), after

    # ---- nothing lost: both destinations equal the source --------------------------------------
    assert result.ops["update"] > 100 and result.ops["row_delete"] > 50, result.ops
    alive = lambda: _alive(cdcd)  # noqa: E731
    converge_began = time.monotonic()
    pg = await wait_converged(cql, schema, pg_dsn, TARGET, timeout=60, alive=alive)
    client = clickhouse_connect.get_client(host="127.0.0.1", port=ch.port, autogenerate_session_id=False)
    try:
        chs = await wait_ch_converged(cql, schema, client, TARGET, timeout=60, alive=alive)
    finally:
        client.close()
    converged_in = time.monotonic() - converge_began
    assert len(pg.rows) > 100 and len(pg.static) > 5
    assert len(chs.rows) == len(pg.rows) and len(chs.static) == len(pg.static)

    # ---- nothing stored twice: no (key, version) twice in the raw, unmerged tables ----------------
    dupes = ch.query(
        "SELECT pk, ck, _cdc_version, count() AS n FROM outage.t "
        "GROUP BY pk, ck, _cdc_version HAVING n > 1 ORDER BY n DESC LIMIT 10"
    )
    static_dupes = ch.query(
        "SELECT pk, _cdc_version, count() AS n FROM outage.t_static "
        "GROUP BY pk, _cdc_version HAVING n > 1 ORDER BY n DESC LIMIT 10"
    )
    assert not dupes and not static_dupes, f"row versions stored twice:\n{dupes}\n{static_dupes}\n{crash}"
    raw_rows = int(ch.query("SELECT count() FROM outage.t"))
    parts = int(
        ch.query("SELECT count() FROM system.parts WHERE database = 'outage' AND table = 't' AND active")
    )
    assert raw_rows > len(chs.rows), "the raw table holds one version per row: merges ran"

    # ---- nothing dead-lettered, nothing logged as an error, clean exit -----------------------------
    assert cdcd.stop() == 0, cdcd.log_tail()
    messages = cdcd.log_messages()
    assert not [m for m in messages if "dead-letter" in m.get("message", "")], "events dead-lettered"
    assert not cdcd.errors(), cdcd.errors()[:5]
    ch.stop()
    print(
        f"\n{crash}\nchanges={result.changes} rows={len(pg.rows)} | outage: pg lag max "
        f"{max(lag or 0.0 for lag in pg_lags):.2f}s (metric {metric_lags['pg']:.2f}s), ch lag max "
        f"{ch_lag_max:.1f}s (metric {metric_lags['ch']:.1f}s), ch states {sorted({s.state['ch'] for s in settled})}, "
        f"ch write retries {outage[-1].retries['ch']}, pg equal to the source {pg_converged_in:.1f}s after "
        f"the writer paused | ch caught up (lag < {CAUGHT_UP:.0f}s) {caught_up_in:.1f}s after the restart; "
        f"pg lag max after {max(s.lag['pg'] or 0.0 for s in rest):.2f}s | converged {converged_in:.1f}s after "
        f"the writer stopped | ch raw rows {raw_rows} in {parts} parts, FINAL {len(chs.rows)}"
    )

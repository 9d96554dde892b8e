"""The whole daemon in-process: Scylla emulator -> pipelines -> a destination, Redis state, and the
operator endpoint describing it. The destination here is an in-memory sink (the real sinks have
their own contract suites); everything else is real: driver, emulator, Redis, aiohttp."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from cdcd.app import Daemon
from cdcd.config import Config, Destination, Duration, TableConfig, loads
from cdcd.events import ChangeEvent, Op, Position, timeuuid_to_micros
from cdcd.ops import metrics
from cdcd.schema import TableSchema
from cdcd.scylla import ScyllaSession


class Outcome(msgspec.Struct):
    applied: int
    skipped_stale: int = 0


class MemorySink:
    """Last write wins per key; remembers every application and the tables it was asked to create."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: dict[int, Any] = {}
        self.applied: list[int] = []
        self.tables: list[tuple[Any, str]] = []
        self.connected = False

    async def connect(self) -> None:
        self.connected = True

    async def healthcheck(self) -> None:
        if not self.connected:
            raise ConnectionError("not connected")

    async def ensure_table(self, mapping: Any, schema: TableSchema) -> None:
        self.tables.append((mapping, schema.qualified))

    async def write(self, mapping: Any, events: Sequence[ChangeEvent]) -> Outcome:
        for e in events:
            pk = e.key["pk"]
            if e.op in (Op.ROW_DELETE, Op.PARTITION_DELETE):
                self.rows.pop(pk, None)
            else:
                self.rows[pk] = e.values.get("v")
            self.applied.append(pk)
        return Outcome(applied=len(events))

    async def aclose(self) -> None:
        self.connected = False


class Mapping(msgspec.Struct, frozen=True):
    source: str
    target: str
    delete: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(emulator: Any, redis_url: str, redis_prefix: str, port: int, extra: str = "") -> Config:
    return loads(
        f"""
[instance]
replica = "test-replica"
[source]
hosts = ["{emulator.host}:{emulator.port}"]
confidence_window = "300ms"
poll_interval = "50ms"
window = "500ms"
max_window = "5s"
generation_poll = "200ms"
request_timeout = "10s"
[state]
redis_url = "{redis_url}"
key_prefix = "{redis_prefix}"
checkpoint_interval = "200ms"
checkpoint_every = 10
[http]
listen = "127.0.0.1:{port}"
admin_token = "${{ADMIN}}"
[pipeline]
shutdown_timeout = "10s"
[pipeline.batch]
max_wait = "50ms"
[pipeline.retry]
initial = "100ms"
max = "500ms"
[destinations.mem]
type = "postgres"
dsn = "postgresql://unused@127.0.0.1/x"
[[tables]]
source = "ks.t"
destinations = ["mem"]
delete = "hard"
target = "analytics.t"
"""
        + extra,
        env={"ADMIN": "tok"},
    )


async def until(check: Any, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not await check():  # noqa: ASYNC110 (polling real servers)
            await asyncio.sleep(0.05)


@pytest.fixture
async def scylla(emulator: Any) -> AsyncIterator[ScyllaSession]:
    session = await ScyllaSession.connect([f"{emulator.host}:{emulator.port}"], request_timeout=10.0)
    await session.execute(
        "CREATE KEYSPACE ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
    )
    await session.execute("CREATE TABLE ks.t (pk int PRIMARY KEY, v text) WITH cdc = {'enabled': true}")
    try:
        yield session
    finally:
        await session.aclose()


class Running:
    def __init__(self, cfg: Config, sink: MemorySink, others: dict[str, MemorySink] | None = None) -> None:
        self.cfg = cfg
        self.sink = sink
        sinks = {"mem": sink, **(others or {})}
        self.daemon = Daemon(
            cfg,
            config_file="test.toml",
            sink_factory=lambda name, dest: sinks[name],
            mapping_factory=self.mapping,
        )
        self.task: asyncio.Task[int] | None = None
        self.url = f"http://{cfg.http.listen}"

    @staticmethod
    def mapping(table: TableConfig, dest: Destination) -> Mapping:
        return Mapping(
            source=table.source, target=f"{table.target_schema}.{table.target_table}", delete=table.delete
        )

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.daemon.serve())
        await until(self.started)
        return self

    async def started(self) -> bool:
        assert self.task is not None
        if self.task.done():
            raise AssertionError(f"daemon exited early with {self.task.result()}")
        return self.daemon.state == "running" and bool(self.daemon.pipelines)

    async def stop(self) -> int:
        assert self.task is not None
        self.daemon.request_stop()
        return await asyncio.wait_for(self.task, 30)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()


async def get_json(path: str, url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url + path) as r:
        return r.status, await r.json()


async def test_daemon_replicates_reports_and_resumes(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    cfg = make_config(emulator, redis_url, redis_prefix, free_port())
    sink = MemorySink("mem")
    async with Running(cfg, sink) as run:
        assert [m for m, _ in sink.tables] == [Mapping(source="ks.t", target="analytics.t", delete="hard")]
        for i in range(10):
            await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, 'a{i}')")
        await scylla.execute("DELETE FROM ks.t WHERE pk = 3")

        async def replicated() -> bool:
            return sink.rows == {i: f"a{i}" for i in range(10) if i != 3}

        await until(replicated)

        status, body = await get_json("/status", run.url)
        assert status == 200 and body["state"] == "running" and body["replica"] == "test-replica"
        dest = body["tables"]["ks.t"]["destinations"]["mem"]
        assert dest["events_applied"] == 11
        assert dest["state"] in ("running", "retrying")
        assert len(dest["groups"]) == len([k for k in run.daemon.pipelines if k[1] == "ks.t"])
        status, ready = await get_json("/readyz", run.url)
        assert status == 200, ready
        assert set(ready["checks"]) == {"daemon", "redis", "scylla", "destination:mem"}
        async with aiohttp.ClientSession() as http, http.get(run.url + "/metrics") as r:
            text = await r.text()
        assert 'cdcd_replication_lag_seconds{destination="mem",replica="test-replica",table="ks.t"}' in text
        assert 'cdcd_cdc_log_ttl_seconds{replica="test-replica",table="ks.t"} 86400.0' in text
        assert 'operation="insert"' in text
        assert 'operation="partition_delete"' in text  # DELETE by partition key of a table without clustering
        assert await run.stop() == 0

    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.get(f"{redis_prefix}:start:mem:ks.t") is not None
        assert await client.keys(f"{redis_prefix}:ckpt:mem:ks.t:*")
    finally:
        await client.aclose()

    # While stopped: more writes. The restarted daemon applies only those (checkpoints resume).
    for i in range(10, 15):
        await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, 'b{i}')")
    async with Running(make_config(emulator, redis_url, redis_prefix, free_port()), sink):

        async def caught_up() -> bool:
            return all(sink.rows.get(i) == f"b{i}" for i in range(10, 15))

        await until(caught_up)
    assert sorted(sink.applied) == sorted([*range(10), 3, *range(10, 15)])  # nothing twice, nothing lost


async def test_generation_switch_moves_to_the_next_generation(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    cfg = make_config(emulator, redis_url, redis_prefix, free_port())
    sink = MemorySink("mem")
    before = (
        metrics.REGISTRY.get_sample_value(
            "cdcd_generation_switches_total",
            {"destination": "mem", "replica": "test-replica", "table": "ks.t"},
        )
        or 0.0
    )
    async with Running(cfg, sink) as run:
        first = {k[2].split(":")[0] for k in run.daemon.pipelines}
        await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (1, 'old')")
        await scylla.execute("INSERT INTO emulator.control (command, value) VALUES ('new_generation', '500')")

        async def switched() -> bool:
            return bool(run.daemon.pipelines) and {k[2].split(":")[0] for k in run.daemon.pipelines} != first

        await until(switched)
        await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (2, 'new')")

        async def both() -> bool:
            return sink.rows == {1: "old", 2: "new"}

        await until(both)
        async with aiohttp.ClientSession() as http, http.get(run.url + "/metrics") as r:
            text = await r.text()
        labels = 'destination="mem",replica="test-replica",table="ks.t"'
        assert f"cdcd_generation_switches_total{{{labels}}} {before + 1}" in text
    # A restart skips the finished generation quietly and keeps replicating the new one.
    async with Running(make_config(emulator, redis_url, redis_prefix, free_port()), sink) as run:
        assert {k[2].split(":")[0] for k in run.daemon.pipelines} != first
        await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (3, 'later')")

        async def three() -> bool:
            return sink.rows.get(3) == "later"

        await until(three)
    labels_dict = {"destination": "mem", "replica": "test-replica", "table": "ks.t"}
    assert metrics.REGISTRY.get_sample_value("cdcd_generation_switches_total", labels_dict) == before + 1
    assert sorted(sink.applied) == [1, 2, 3]


async def test_admin_flush_needs_the_token(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    cfg = make_config(emulator, redis_url, redis_prefix, free_port())
    async with Running(cfg, MemorySink("mem")) as run, aiohttp.ClientSession() as http:
        async with http.post(run.url + "/admin/checkpoints/flush") as r:
            assert r.status == 401
        async with http.post(
            run.url + "/admin/checkpoints/flush", headers={"Authorization": "Bearer tok"}
        ) as r:
            assert r.status == 200
            assert "pipelines" in (await r.json())["result"]


async def test_sigterm_drains_and_exits_0(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    sink = MemorySink("mem")
    run = Running(make_config(emulator, redis_url, redis_prefix, free_port()), sink)
    async with run:
        await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (1, 'x')")

        async def applied() -> bool:
            return sink.rows == {1: "x"}

        await until(applied)
        os.kill(os.getpid(), signal.SIGTERM)
        assert run.task is not None
        assert await asyncio.wait_for(run.task, 30) == 0
    assert {p.state for p in run.daemon.pipelines.values()} == {"closed"}
    assert not sink.connected  # sinks closed on the way out


class StuckSink(MemorySink):
    """Accepts nothing: every write waits forever, so draining cannot finish."""

    async def write(self, mapping: Any, events: Sequence[ChangeEvent]) -> Outcome:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_second_signal_forces_exit_1(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    run = Running(make_config(emulator, redis_url, redis_prefix, free_port()), StuckSink("mem"))
    async with run:
        await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (1, 'x')")

        async def writing() -> bool:
            return any(s.in_flight for s in run.daemon._statuses())

        await until(writing)
        os.kill(os.getpid(), signal.SIGTERM)

        async def draining() -> bool:
            return run.daemon.state == "stopping"

        await until(draining)
        os.kill(os.getpid(), signal.SIGINT)
        assert run.task is not None
        assert await asyncio.wait_for(run.task, 30) == 1
    assert "terminated" in {p.state for p in run.daemon.pipelines.values()}


class DownSink(MemorySink):
    """A destination that cannot be reached."""

    async def connect(self) -> None:
        raise ConnectionError("connection refused")


async def test_a_destination_that_is_down_does_not_hold_back_the_others(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    extra = (
        '[destinations.down]\ntype = "postgres"\ndsn = "postgresql://unused@127.0.0.1/y"\n'
        '[[tables]]\nsource = "ks.t"\ndestinations = ["down"]\n'
    )
    extra = extra.replace('source = "ks.t"', 'source = "ks.u"')
    await scylla.execute("CREATE TABLE ks.u (pk int PRIMARY KEY, v text) WITH cdc = {'enabled': true}")
    cfg = make_config(emulator, redis_url, redis_prefix, free_port(), extra)
    sink, down = MemorySink("mem"), DownSink("down")
    async with Running(cfg, sink, {"down": down}) as run:
        await scylla.execute("INSERT INTO ks.t (pk, v) VALUES (1, 'one')")
        await scylla.execute("INSERT INTO ks.u (pk, v) VALUES (1, 'lost?')")

        async def applied() -> bool:
            return sink.rows == {1: "one"}

        await until(applied)
        status, ready = await get_json("/readyz", run.url)
        assert status == 503
        assert ready["checks"]["destination:down"]["ok"] is False
        assert ready["checks"]["destination:mem"]["ok"] is True
        assert down.rows == {}


async def test_admin_flush_saves_checkpoints_to_redis_now(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    """With periodic saves practically off, nothing is in Redis until POST /admin/checkpoints/flush;
    then every group's applied positions are there, past the rows just applied."""
    cfg = make_config(emulator, redis_url, redis_prefix, free_port())
    state = msgspec.structs.replace(cfg.state, checkpoint_interval=Duration(3600), checkpoint_every=10**6)
    cfg = msgspec.structs.replace(cfg, state=state)
    sink = MemorySink("mem")
    client = aioredis.Redis.from_url(redis_url)
    pattern = f"{redis_prefix}:ckpt:mem:ks.t:*"
    try:
        async with Running(cfg, sink) as run, aiohttp.ClientSession() as http:
            for i in range(5):
                await scylla.execute(f"INSERT INTO ks.t (pk, v) VALUES ({i}, 'f{i}')")

            async def applied() -> bool:
                return sink.rows == {i: f"f{i}" for i in range(5)}

            await until(applied)
            written_us = int(time.time() * 1e6)  # after the rows' write times

            async def past_the_rows() -> bool:
                return all(
                    st.positions
                    and all(timeuuid_to_micros(uuid.UUID(t)) > written_us for t in st.positions.values())
                    for st in run.daemon._statuses()
                )

            await until(past_the_rows)
            assert await client.keys(pattern) == []  # the policy saved nothing by itself

            headers = {"Authorization": "Bearer tok"}
            async with http.post(run.url + "/admin/checkpoints/flush", headers=headers) as r:
                assert r.status == 200
                result = (await r.json())["result"]
            groups = len(run.daemon.pipelines)
            assert result == {"pipelines": groups, "saved": groups, "failed": 0, "errors": []}

            saved: dict[str, str] = {}
            for key in await client.keys(pattern):
                for stream, blob in (await client.hgetall(key)).items():
                    saved[stream.hex()] = str(msgspec.msgpack.decode(blob, type=Position).time)
            expected = {s: t for st in run.daemon._statuses() for s, t in st.checkpoint.items()}
            assert saved == expected and len(saved) == sum(len(g.positions) for g in run.daemon._statuses())
            assert all(timeuuid_to_micros(uuid.UUID(t)) > written_us for t in saved.values())
    finally:
        await client.aclose()


class ForgettingSink(MemorySink):
    """Has a row cache to drop, like the ClickHouse sink with ``row_cache_rows``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.forgotten: list[Any] = []

    def forget(self, mapping: Any = None) -> None:
        self.forgotten.append(mapping)


async def test_sink_row_cache_is_dropped_when_a_group_starts(
    emulator: Any, scylla: ScyllaSession, redis_url: str, redis_prefix: str
) -> None:
    sink = ForgettingSink("mem")
    async with Running(make_config(emulator, redis_url, redis_prefix, free_port()), sink) as run:

        async def all_started() -> bool:
            return len(sink.forgotten) == len(run.daemon.pipelines)

        await until(all_started)
        assert set(sink.forgotten) == {Mapping(source="ks.t", target="analytics.t", delete="hard")}

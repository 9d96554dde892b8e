"""The operator HTTP endpoint against a real aiohttp server on a free port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from cdcd.config import Secret
from cdcd.events import ChangeEvent, Op, Position
from cdcd.flow.contracts import PipelineId, PipelineStatus
from cdcd.ops import emit, metrics
from cdcd.ops.http import CheckResult, HttpServer, build_status, make_app

TOKEN = "s3cret-admin-token"


def _status(
    group: str, *, state: str = "running", lag: float | None = 1.5, applied: int = 10
) -> PipelineStatus:
    return PipelineStatus(
        destination="pg",
        table="shop.orders",
        group=group,
        state=state,  # type: ignore[arg-type]
        positions={"00" * 16: "6f3c0c00-0000-1000-8000-000000000000"},
        checkpoint={},
        lag_seconds=lag,
        last_event_age_seconds=None,
        events_applied=applied,
        events_skipped_stale=0,
        events_rejected=0,
        events_dead_lettered=0,
        write_retries=0,
        queue_depth=2,
        in_flight=5,
        last_commit_age_seconds=3.0,
        last_error=None,
    )


class World:
    def __init__(self) -> None:
        self.statuses = [_status("1000:0"), _status("1000:1", lag=7.0, applied=5)]
        self.checks: dict[str, CheckResult] = {"redis": CheckResult(ok=True), "scylla": CheckResult(ok=True)}
        self.flushes = 0

    async def ready(self) -> Mapping[str, CheckResult]:
        return self.checks

    async def flush(self) -> Mapping[str, Any]:
        self.flushes += 1
        return {"saved": 2}


async def _serve(world: World, token: Secret | None) -> AsyncIterator[tuple[str, World]]:
    local = CollectorRegistry()
    local.register(metrics.PipelineCollector(lambda: world.statuses, emit.replica))
    app = make_app(
        status=lambda: build_status(world.statuses, replica="test"),
        ready=world.ready,
        registries=[metrics.REGISTRY, local],
        admin_token=token,
        admin_actions={"checkpoints/flush": world.flush},
    )
    server = HttpServer(app, "127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", world
    finally:
        await server.aclose()


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, World]]:
    async for item in _serve(World(), Secret(TOKEN)):
        yield item


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_healthz(served: tuple[str, World], client: aiohttp.ClientSession) -> None:
    url, _ = served
    async with client.get(url + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"


async def test_status_shape(served: tuple[str, World], client: aiohttp.ClientSession) -> None:
    url, _ = served
    async with client.get(url + "/status?verbose=true") as r:
        assert r.status == 200
        body = await r.json()
    assert body["replica"] == "test"
    dest = body["tables"]["shop.orders"]["destinations"]["pg"]
    assert dest["state"] == "running"
    assert dest["lag_seconds"] == 7.0
    assert dest["events_applied"] == 15
    group = dest["groups"]["1000:0"]
    assert group["state"] == "running"
    assert group["positions"] == {"00" * 16: "6f3c0c00-0000-1000-8000-000000000000"}
    assert group["lag_seconds"] == 1.5 and group["events_applied"] == 10


async def test_status_reports_the_worst_group_state(
    served: tuple[str, World], client: aiohttp.ClientSession
) -> None:
    url, world = served
    world.statuses.append(_status("1000:2", state="failed"))
    world.statuses.append(_status("900:0", state="done", lag=1000.0))
    async with client.get(url + "/status") as r:
        dest = (await r.json())["tables"]["shop.orders"]["destinations"]["pg"]
    assert dest["state"] == "failed"
    assert dest["lag_seconds"] == 7.0  # finished groups do not count towards lag


async def test_readyz_follows_dependency_checks(
    served: tuple[str, World], client: aiohttp.ClientSession
) -> None:
    url, world = served
    async with client.get(url + "/readyz") as r:
        assert r.status == 200
        assert (await r.json())["ready"] is True
    world.checks["destination:pg"] = CheckResult(ok=False, detail="connection refused")
    async with client.get(url + "/readyz") as r:
        assert r.status == 503
        body = await r.json()
    assert body["ready"] is False
    assert body["checks"]["destination:pg"] == {"ok": False, "detail": "connection refused", "seconds": 0.0}


async def test_metrics_text_has_our_metrics(served: tuple[str, World], client: aiohttp.ClientSession) -> None:
    url, _ = served
    emit.set_replica("replica-a")
    pid = PipelineId(destination="pg", table="shop.orders", group="1000:0")
    event = ChangeEvent(
        table="shop.orders",
        pos=Position(generation=1000, stream_id=b"\0" * 16, time=uuid.uuid1()),
        batch_seq=0,
        op=Op.INSERT,
        write_time_us=1_700_000_000_000_000,
        key={"id": 1},
        values={"email": "someone@example.com"},
    )

    class Outcome:
        applied = 1
        skipped_stale = 0

    emit.FlowTelemetry().batch_written(pid, [event], Outcome(), 0.01)
    async with client.get(url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    for name in (
        "cdcd_events_applied_total",
        "cdcd_batch_write_seconds_bucket",
        "cdcd_replication_latency_seconds_bucket",
        "cdcd_replication_lag_seconds",
        "cdcd_checkpoint_age_seconds",
        "cdcd_queue_depth",
        "cdcd_build_info",
    ):
        assert name in text, name
    assert (
        'cdcd_events_applied_total{destination="pg",operation="insert",replica="replica-a",table="shop.orders"}'
        in text
    )
    assert (
        'cdcd_replication_lag_seconds{destination="pg",replica="replica-a",table="shop.orders"} 7.0' in text
    )
    assert 'cdcd_queue_depth{destination="pg",replica="replica-a",table="shop.orders"} 4.0' in text
    assert "someone@example.com" not in text


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["no header", "wrong token", "no scheme", "basic scheme"],
)
async def test_admin_needs_the_bearer_token(
    served: tuple[str, World], client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    url, world = served
    async with client.post(url + "/admin/checkpoints/flush", headers=headers) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with client.get(url + "/admin/", headers=headers) as r:
        assert r.status == 401
    assert world.flushes == 0


async def test_admin_action_runs_with_the_token(
    served: tuple[str, World], client: aiohttp.ClientSession
) -> None:
    url, world = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client.post(url + "/admin/checkpoints/flush", headers=auth) as r:
        assert r.status == 200
        assert await r.json() == {"action": "checkpoints/flush", "result": {"saved": 2}}
    assert world.flushes == 1
    async with client.get(url + "/admin/", headers=auth) as r:
        assert (await r.json()) == {"actions": ["checkpoints/flush"]}
    async with client.post(url + "/admin/nope", headers=auth) as r:
        assert r.status == 404


async def test_admin_disabled_without_a_configured_token(client: aiohttp.ClientSession) -> None:
    async for url, world in _serve(World(), None):
        async with client.post(url + "/admin/checkpoints/flush", headers={"Authorization": "Bearer "}) as r:
            assert r.status == 401
            assert "admin API disabled" in (await r.json())["error"]
        assert world.flushes == 0

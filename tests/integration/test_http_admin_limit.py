"""The admin API limits refused requests per client: after ``ADMIN_FAILURES`` wrong tokens within
``ADMIN_FAILURE_WINDOW`` seconds every admin request from that address gets 429 with Retry-After
(even with the right token) while other endpoints keep answering; a real server, real HTTP."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry

from cdcd.config import Secret
from cdcd.ops.http import (
    ADMIN_FAILURE_WINDOW,
    ADMIN_FAILURES,
    CheckResult,
    FailureLimit,
    HttpServer,
    make_app,
)

TOKEN = "limit-token-1"


async def test_wrong_tokens_get_the_client_blocked() -> None:
    flushed = []

    async def flush() -> dict[str, int]:
        flushed.append(1)
        return {"saved": 1}

    async def ready() -> dict[str, CheckResult]:
        return {"redis": CheckResult(ok=True)}

    app = make_app(
        status=lambda: {"tables": {}},
        ready=ready,
        registries=[CollectorRegistry()],
        admin_token=Secret(TOKEN),
        admin_actions={"checkpoints/flush": flush},
    )
    server = HttpServer(app, "127.0.0.1:0")
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            good = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{base}/admin/checkpoints/flush", headers=good) as r:
                assert r.status == 200
            for i in range(ADMIN_FAILURES):
                async with http.get(f"{base}/admin/", headers={"Authorization": f"Bearer guess-{i}"}) as r:
                    assert r.status == 401, i
            async with http.post(f"{base}/admin/checkpoints/flush", headers=good) as r:
                assert r.status == 429
                retry = int(r.headers["Retry-After"])
                assert 0 < retry <= ADMIN_FAILURE_WINDOW
                assert "too many refused admin requests" in (await r.json())["error"]
            assert flushed == [1]  # the blocked request did nothing
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
    finally:
        await server.aclose()


def test_the_window_slides() -> None:
    limit = FailureLimit(limit=3, window=10.0)
    for t in (0.0, 1.0, 2.0):
        assert limit.blocked_for("a", t) == 0.0
        limit.failed("a", t)
    assert limit.blocked_for("a", 2.0) == 8.0  # until the first failure is 10 s old
    assert limit.blocked_for("b", 2.0) == 0.0  # per client
    assert limit.blocked_for("a", 10.0) == 0.0  # the first one aged out: 2 left
    limit.failed("a", 10.5)
    assert limit.blocked_for("a", 10.5) == 0.5  # 1.0 ages out at 11.0

"""``GET /`` serves the status page: HTML, no external assets (no src/href to another host, no
CDN), data rendered as text only (no innerHTML)."""

from __future__ import annotations

import re

import aiohttp
from prometheus_client import CollectorRegistry

from cdcd.ops.http import HttpServer, make_app


async def test_page_is_self_contained() -> None:
    async def ready() -> dict[str, object]:
        return {}

    server = HttpServer(
        make_app(
            status=lambda: {"tables": {}}, ready=ready, registries=[CollectorRegistry()], admin_token=None
        ),
        "127.0.0.1:0",
    )
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{server.port}/") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/html")
            page = await r.text()
    finally:
        await server.aclose()
    assert 'fetch("status"' in page
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page)
    assert "innerHTML" not in page and "<link" not in page

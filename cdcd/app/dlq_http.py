"""``/admin/dlq/...``: ``cdcd dlq`` over HTTP, behind the admin token (``cdcd.ops.http``).

=======================================  =========================================================
``GET  /admin/dlq?queue=&table=&destination=&limit=``  entries as ``cdcd dlq list --json`` objects
                                         (``limit`` default 100, at most 10000), oldest first
``GET  /admin/dlq/entry?id=ID``          one entry (404 when absent)
``POST /admin/dlq/retry``                ``{"ids": [...]}`` or ``{"all": true, "queue": .., "table":
                                         .., "destination": ..}``: resubmit; answers the result
``POST /admin/dlq/edit``                 ``{"id": ID, "set": {"column": "value", ...}}``: correct
                                         (values parsed as the column's CQL type), then resubmit
``POST /admin/dlq/drop``                 ``{"ids": [...]}`` or ``{"all": true, filters}``
=======================================  =========================================================

Bad requests answer 400 with ``{"error": ...}`` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from cdcd.app.dlq import DlqTool, describe_error, entry_json
from cdcd.errors import ConfigError
from cdcd.ops.logging import get_logger, scrub

__all__ = ["dlq_routes"]

log = get_logger("cdcd.ops.http")
_FILTERS = ("queue", "table", "destination")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, ensure_ascii=False), status=status, content_type="application/json"
    )


def dlq_routes(tool: Callable[[], Awaitable[DlqTool]]) -> Callable[[web.Application], None]:
    """A route installer for ``make_app(extra_routes=...)``; ``tool()`` gives the ``DlqTool``."""

    async def filters(src: Any) -> dict[str, Any]:
        out = {k: src.get(k) or None for k in _FILTERS}
        if out["queue"] not in (None, "validation", "dead", "stale"):
            raise ValueError(f"queue must be validation, dead or stale, got {out['queue']!r}")
        return out

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"the body must be a JSON object: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    def guard(
        fn: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            try:
                return await fn(request)
            except (ValueError, KeyError, ConfigError) as exc:
                return _json({"error": describe_error(exc)}, 400)
            except Exception as exc:
                log.warning(
                    "admin dlq request failed", path=request.path, error=scrub(f"{type(exc).__name__}: {exc}")
                )
                return _json({"error": scrub(describe_error(exc))}, 500)

        return handler

    async def list_(request: web.Request) -> web.Response:
        f = await filters(request.query)
        try:
            limit = min(10_000, max(1, int(request.query.get("limit", "100"))))
        except ValueError:
            raise ValueError(f"limit must be an integer, got {request.query.get('limit')!r}") from None
        t = await tool()
        out = []
        async for entry in t.entries(**f):
            out.append(entry_json(entry))
            if len(out) >= limit:
                break
        return _json({"entries": out, "count": len(out)})

    async def show(request: web.Request) -> web.Response:
        ident = request.query.get("id", "")
        entry = await (await tool()).get(ident)
        if entry is None:
            return _json({"error": f"no entry {ident}"}, 404)
        return _json(entry_json(entry))

    async def select(data: dict[str, Any]) -> tuple[DlqTool, Any, list[str]]:
        ids = data.get("ids") or []
        all_ = bool(data.get("all"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or bool(ids) == all_:
            raise ValueError('give "ids" (a list of entry ids) or "all": true with filters, not both')
        t = await tool()
        entries, missing = await t.select(ids, all_=all_, **await filters(data))
        return t, entries, missing

    async def retry(request: web.Request) -> web.Response:
        t, entries, missing = await select(await body(request))
        result = await t.retry(entries)
        result.missing.extend(missing)
        log.info(
            "admin dlq retry",
            applied=len(result.applied),
            refused=len(result.refused),
            stale=len(result.stale),
        )
        return _json(msgspec.to_builtins(result))

    async def drop(request: web.Request) -> web.Response:
        t, entries, missing = await select(await body(request))
        dropped = await t.drop(entries)
        log.info("admin dlq drop", dropped=dropped)
        return _json({"dropped": dropped, "missing": missing})

    async def edit(request: web.Request) -> web.Response:
        data = await body(request)
        ident, changes = data.get("id"), data.get("set")
        if not isinstance(ident, str) or not isinstance(changes, dict) or not changes:
            raise ValueError('expected {"id": "<entry id>", "set": {"column": "value", ...}}')
        _, result = await (await tool()).edit(ident, {str(k): str(v) for k, v in changes.items()})
        return _json(msgspec.to_builtins(result))

    def install(app: web.Application) -> None:
        app.router.add_get("/admin/dlq", guard(list_))
        app.router.add_get("/admin/dlq/entry", guard(show))
        app.router.add_post("/admin/dlq/retry", guard(retry))
        app.router.add_post("/admin/dlq/edit", guard(edit))
        app.router.add_post("/admin/dlq/drop", guard(drop))

    return install

"""The operator HTTP endpoint (R-63), on aiohttp.

* ``GET /``: the status page (``cdcd.ops.page``: HTML polling ``/status``, no external assets).
* ``GET /healthz``: 200 while the process and its event loop answer.
* ``GET /readyz``: 200 when every dependency check passes, else 503; JSON per dependency.
* ``GET /status``: JSON from the status provider: per table, destination and stream group the
  state, lag, counters and mode (``build_status`` folds ``cdcd.flow.PipelineStatus`` values).
  Each stream's applied and checkpointed position (``positions``, ``checkpoint``: most of the
  bytes) only with ``?verbose=true``; by default a group shows how many ``streams`` it has.
* ``GET /metrics``: Prometheus text of the given registries.
* ``/admin/*``: operator actions; every request needs ``Authorization: Bearer <http.admin_token>``
  (401 otherwise, and always 401 while no token is configured). ``POST /admin/<name>`` runs the
  action registered under ``name`` (e.g. ``checkpoints/flush``); ``GET /admin/`` lists them.
  A client (by address) with ``ADMIN_FAILURES`` refused requests within ``ADMIN_FAILURE_WINDOW``
  seconds gets 429 with ``Retry-After`` for every admin request until the oldest of them ages out,
  even with the right token, so a token cannot be guessed at network speed.

The server binds in ``start()``; ``port`` is the bound port (``listen = "127.0.0.1:0"`` picks one).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from cdcd import __version__
from cdcd.config import Secret
from cdcd.ops.horizon import fold_lag, time_until_loss
from cdcd.ops.logging import get_logger, scrub
from cdcd.ops.page import STATUS_PAGE

__all__ = ["AdminAction", "CheckResult", "HttpServer", "build_status", "make_app", "summarize", "worst_state"]

log = get_logger("cdcd.ops.http")

AdminAction = Callable[[], Awaitable[Mapping[str, Any]]]

ADMIN_FAILURES = 10  # refused admin requests per client...
ADMIN_FAILURE_WINDOW = 60.0  # ...within this many seconds, then 429 until the oldest ages out
_MAX_CLIENTS = 10_000  # addresses remembered (the oldest forgotten first)


class FailureLimit:
    """Refused admin requests per client address in a sliding window."""

    def __init__(self, limit: int = ADMIN_FAILURES, window: float = ADMIN_FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, list[float]] = {}

    def _recent(self, client: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(client, ()) if now - t < self.window]
        if times:
            self._failures[client] = times
        else:
            self._failures.pop(client, None)
        return times

    def blocked_for(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try again (0: not blocked)."""
        now = time.monotonic() if now is None else now
        times = self._recent(client, now)
        return self.window - (now - times[-self.limit]) if len(times) >= self.limit else 0.0

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._recent(client, now)
        self._failures.pop(client, None)  # re-insert: the dict's order is least recently failed first
        self._failures[client] = [*times[-self.limit + 1 :], now] if self.limit > 1 else [now]
        while len(self._failures) > _MAX_CLIENTS:
            del self._failures[next(iter(self._failures))]


class CheckResult(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of one dependency health check."""

    ok: bool
    detail: str = ""  # error text when not ok (secrets scrubbed), or a short description
    seconds: float = 0.0


ReadyCheck = Callable[[], Awaitable[Mapping[str, CheckResult]]]
StatusProvider = Callable[[], Mapping[str, Any]]

_json = msgspec.json.Encoder(enc_hook=repr)


def _response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_json.encode(body), status=status, content_type="application/json", headers=headers
    )


_FINISHED = ("done", "closed", "terminated", "failed")


def build_status(
    statuses: Iterable[Any],
    *,
    ttls: Mapping[str, int] | None = None,
    stored_lags: Mapping[tuple[str, str], float] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """Fold pipeline statuses into ``{"tables": {table: {"destinations": {dest: {...,
    "groups": {group: status}}}}}}``, with per-destination totals (max lag, summed counters,
    a state: the worst of its groups) and ``time_until_data_loss_seconds`` (the table's CDC log
    TTL from ``ttls`` minus the lag; null when unknown or the log never expires). A (table,
    destination) with no pipeline but a lag in ``stored_lags`` (estimated from the checkpoints:
    its destination has been down since start-up) is shown in state ``waiting``."""
    statuses = list(statuses)
    lags = fold_lag(statuses, stored_lags)
    tables: dict[str, Any] = {}
    for st in statuses:
        raw = msgspec.to_builtins(st)
        dest = tables.setdefault(st.table, {"destinations": {}})["destinations"].setdefault(
            st.destination,
            {"state": "done", "lag_seconds": None, "events_applied": 0, "queue_depth": 0, "groups": {}},
        )
        for k in ("destination", "table", "group"):
            raw.pop(k, None)
        raw["streams"] = len(raw.get("positions") or ())
        dest["groups"][st.group] = raw
        if st.state not in _FINISHED:  # live branches by mode: read shared, or catching up alone
            modes = dest.setdefault("modes", {})
            mode = getattr(st, "mode", "shared")
            modes[mode] = modes.get(mode, 0) + 1
        dest["events_applied"] += st.events_applied
        dest["queue_depth"] += st.queue_depth
        if _RANK.get(st.state, 0) > _RANK.get(dest["state"], 0):
            dest["state"] = st.state
    for (table, name), lag in lags.items():
        dests = tables.setdefault(table, {"destinations": {}})["destinations"]
        if name not in dests:  # no pipeline runs: the lag is the stored estimate
            dests[name] = {"state": "waiting", "lag_source": "checkpoints", "events_applied": 0,
                           "queue_depth": 0, "groups": {}}  # fmt: skip
        dests[name]["lag_seconds"] = lag
    for table, entry in tables.items():
        for dest in entry["destinations"].values():
            dest["time_until_data_loss_seconds"] = time_until_loss(
                (ttls or {}).get(table, 0), dest["lag_seconds"]
            )
    return {**top, "tables": tables}


# Per-stream detail of a group in /status, shown only with ?verbose=true.
STREAM_DETAIL = ("positions", "checkpoint")


def summarize(status: Mapping[str, Any]) -> dict[str, Any]:
    """``status`` (``build_status`` output) without the per-stream detail of its groups."""
    out = dict(status)
    tables = {}
    for table, entry in (status.get("tables") or {}).items():
        dests = {}
        for name, dest in entry.get("destinations", {}).items():
            groups = {
                g: {k: v for k, v in body.items() if k not in STREAM_DETAIL}
                for g, body in dest.get("groups", {}).items()
            }
            dests[name] = {**dest, "groups": groups}
        tables[table] = {**entry, "destinations": dests}
    out["tables"] = tables
    return out


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


# Worst first wins when folding group states into a destination state.
_RANK = {
    "done": 0, "closed": 1, "starting": 2, "running": 3, "draining": 4, "retrying": 5,
    "circuit-open": 6, "terminated": 7, "failed": 8, "masking-unavailable": 9, "queue-full": 6,
    "halted": 6,
}  # fmt: skip


def worst_state(states: Iterable[str]) -> str:
    """The state a destination shows for its groups' ``states``: the worst one ("done" if none)."""
    worst = "done"
    for state in states:
        if _RANK.get(state, 0) > _RANK.get(worst, 0):
            worst = state
    return worst


def make_app(
    *,
    status: StatusProvider,
    ready: ReadyCheck,
    registries: Sequence[CollectorRegistry],
    admin_token: Secret | None,
    admin_actions: Mapping[str, AdminAction] | None = None,
    ready_timeout: float = 10.0,
    extra_routes: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """The aiohttp application (no I/O until served)."""
    actions = dict(admin_actions or {})
    started = time.time()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=STATUS_PAGE, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def healthz(request: web.Request) -> web.Response:
        return _response({"status": "ok", "version": __version__, "uptime_seconds": time.time() - started})

    async def readyz(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(ready_timeout):
                results = dict(await ready())
        except TimeoutError:
            return _response({"ready": False, "error": f"checks took over {ready_timeout} s"}, status=503)
        ok = all(r.ok for r in results.values())
        body = {"ready": ok, "checks": {k: msgspec.to_builtins(v) for k, v in results.items()}}
        return _response(body, status=200 if ok else 503)

    async def status_handler(request: web.Request) -> web.Response:
        flag = request.query.get("verbose", "false").strip().lower()
        if flag not in _TRUE + _FALSE:
            return _response({"error": f"verbose must be true or false, got {flag[:20]!r}"}, 400)
        body = status()
        return _response(body if flag in _TRUE else summarize(body))

    async def metrics(request: web.Request) -> web.Response:
        body = b"".join(generate_latest(r) for r in registries)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def admin_index(request: web.Request) -> web.Response:
        return _response({"actions": sorted(actions)})

    async def admin_action(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        action = actions.get(name)
        if action is None:
            return _response({"error": f"unknown admin action {name!r}", "actions": sorted(actions)}, 404)
        log.info("admin action", action=name, remote=request.remote)
        try:
            result = await action()
        except Exception as exc:
            log.warning("admin action failed", action=name, error=scrub(f"{type(exc).__name__}: {exc}"))
            return _response({"error": scrub(f"{type(exc).__name__}: {exc}")}, 500)
        return _response({"action": name, "result": dict(result)})

    limit = FailureLimit()

    @web.middleware
    async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/admin" or request.path.startswith("/admin/"):
            client = request.remote or "unknown"
            wait = limit.blocked_for(client)
            if wait > 0:
                body = {"error": f"too many refused admin requests from {client}; retry in {wait:.0f} s"}
                return _response(body, 429, {"Retry-After": str(max(1, round(wait)))})
            denied = _check_token(request, admin_token)
            if denied is not None:
                limit.failed(client)
                if limit.blocked_for(client) > 0:
                    log.warning(
                        "admin client blocked", remote=client, failures=limit.limit, window_s=limit.window
                    )
                return denied
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_handler)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/", admin_index)
    if extra_routes is not None:  # before the catch-all below (e.g. /admin/dlq/..., cdcd.app.dlq_http)
        extra_routes(app)
    app.router.add_post("/admin/{name:.+}", admin_action)
    return app


def _check_token(request: web.Request, token: Secret | None) -> web.Response | None:
    challenge = {"WWW-Authenticate": 'Bearer realm="cdcd admin"'}
    if token is None or not token.get():
        return _response({"error": "admin API disabled: set http.admin_token"}, 401, challenge)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.get().encode()):
        log.warning("admin request refused", path=request.path, remote=request.remote)
        return _response({"error": "missing or wrong bearer token"}, 401, challenge)
    return None


class HttpServer:
    """Serves an app on ``listen`` ("host:port"). ``start()`` binds; ``aclose()`` stops."""

    def __init__(self, app: web.Application, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        """Bind and serve. Raises OSError when the address is taken."""
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("http listening", host=self.host, port=self.port)

    async def aclose(self) -> None:
        await self._runner.cleanup()

"""``cdcd status --config F``: the whole cluster as Redis holds it (``cdcd.app.leases``).

Reads only Redis (the configured ``redis_url`` and ``key_prefix``): the live replicas (their
heartbeats: name, config fingerprint, held leases with each destination's lag, wanted groups),
every lease (owner, epoch, seconds to expiry) and the groups some replica wants but nobody
holds. ``cluster_view`` returns the data; ``print_status`` prints it (text, or JSON with
``--json``). Exit code 0, or 1 when Redis cannot be read.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

from cdcd.app.deps import Dependencies
from cdcd.app.reload import fingerprint
from cdcd.config import Config
from cdcd.ops.logging import scrub
from cdcd.state.leases import LeaseStore

__all__ = [
    "cluster_view",
    "print_status",
    "watch_status",
]


async def cluster_view(cfg: Config) -> dict[str, Any]:
    """Replicas, leases (with lag per destination) and unowned groups, from Redis."""
    deps = Dependencies(cfg)
    client = await deps.connect_redis()
    try:
        store = LeaseStore(client, prefix=cfg.state.key_prefix)
        replicas = await store.replicas()
        leases = await store.leases()
    finally:
        await client.aclose()
    now = time.time()
    lags: dict[tuple[str, str], dict[str, Any]] = {}
    wanted: set[tuple[str, str]] = set()
    for info in replicas.values():
        for held in info.get("held") or ():
            lags[(held.get("table", ""), held.get("group", ""))] = held.get("lags") or {}
        for entry in info.get("wanted") or ():
            table, _, group = str(entry).partition(" ")
            wanted.add((table, group))
    owned = {(x.table, x.group) for x in leases}
    mine = fingerprint(cfg)
    return {
        "key_prefix": cfg.state.key_prefix,
        "config_fingerprint": mine,
        "replicas": {
            r: {
                "name": info.get("name"),
                "fingerprint": info.get("fingerprint"),
                "config_matches": info.get("fingerprint") == mine,
                "held": len(info.get("held") or ()),
                "up_seconds": round(now - float(info.get("started_at") or now), 1),
                "heartbeat_age_seconds": round(now - float(info.get("at") or now), 1),
            }
            for r, info in sorted(replicas.items())
        },
        "groups": [
            {
                "table": x.table,
                "group": x.group,
                "owner": x.owner,
                "epoch": x.epoch,
                "expires_in": x.expires_in,
                "owner_live": x.owner in replicas,
                "lag_seconds": lags.get((x.table, x.group), {}),
            }
            for x in leases
        ],
        "unowned": [{"table": t, "group": g} for t, g in sorted(wanted - owned)],
    }


def _lag(value: Any) -> str:
    return "?" if value is None else f"{float(value):.1f}s"


def print_status(cfg: Config, *, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Print the cluster view; 1 if Redis could not be read."""
    try:
        view = asyncio.run(cluster_view(cfg))
    except Exception as exc:
        print(f"cdcd status: cannot read Redis: {scrub(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(view, indent=2, sort_keys=True), file=out)
        return 0
    reps = view["replicas"]
    print(f'key prefix "{view["key_prefix"]}", this config {view["config_fingerprint"]}', file=out)
    print(f"replicas ({len(reps)}):", file=out)
    for r, info in reps.items():
        mark = "" if info["config_matches"] else "  CONFIG DIFFERS"
        print(f"  {r}  name={info['name']}  leases={info['held']}  config={info['fingerprint']}"
              f"  up {info['up_seconds']:.0f}s{mark}", file=out)  # fmt: skip
    if not reps:
        print("  (none live)", file=out)
    print(f"groups ({len(view['groups'])} leased):", file=out)
    for g in view["groups"]:
        lag = " ".join(f"{d}={_lag(v)}" for d, v in sorted(g["lag_seconds"].items())) or "-"
        dead = "" if g["owner_live"] else " (owner not live)"
        print(f"  {g['table']} {g['group']}  owner={g['owner']}{dead}  epoch={g['epoch']}"
              f"  expires in {g['expires_in']:.1f}s  lag: {lag}", file=out)  # fmt: skip
    print(f"unowned groups ({len(view['unowned'])}):", file=out)
    for u in view["unowned"]:
        print(f"  {u['table']} {u['group']}", file=out)
    _print_tables(view, out)
    return 0


def _print_tables(view: dict[str, Any], out: TextIO) -> None:
    """Per table and destination: groups running, unowned, and the worst lag (a terminal table)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for g in view["groups"]:
        for dest, lag in g["lag_seconds"].items():
            r = rows.setdefault((g["table"], dest), {"groups": 0, "lag": None})
            r["groups"] += 1
            if lag is not None:
                r["lag"] = lag if r["lag"] is None else max(r["lag"], lag)
    unowned: dict[str, int] = {}
    for u in view["unowned"]:
        unowned[u["table"]] = unowned.get(u["table"], 0) + 1
    if not rows and not unowned:
        return
    print(f"{'table':<32} {'destination':<14} {'groups':>6} {'unowned':>7} {'lag':>10}", file=out)
    for (table, dest), r in sorted(rows.items()):
        print(
            f"{table:<32} {dest:<14} {r['groups']:>6} {unowned.get(table, 0):>7} {_lag(r['lag']):>10}",
            file=out,
        )
    for table in sorted(set(unowned) - {t for t, _ in rows}):
        print(f"{table:<32} {'-':<14} {0:>6} {unowned[table]:>7} {'-':>10}", file=out)


def watch_status(
    cfg: Config, *, interval: float = 2.0, out: TextIO = sys.stdout, rounds: int | None = None
) -> int:
    """``cdcd status --watch``: the cluster view again every ``interval`` seconds (the screen is
    cleared first on a terminal) until Ctrl-C; ``rounds`` stops after that many (tests)."""
    n = 0
    try:
        while rounds is None or n < rounds:
            if n:
                time.sleep(interval)
            if out.isatty():
                out.write("\x1b[H\x1b[2J")
            else:
                print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}", file=out)
            code = print_status(cfg, out=out)
            out.flush()
            if code and rounds is not None:
                return code
            n += 1
    except KeyboardInterrupt:
        return 0
    return 0

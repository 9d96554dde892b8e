"""``cdcd resume --table T`` and ``cdcd schema history --table T`` (argument handling in
``cdcd.cli``). Both talk to Redis only, so they work whether or not cdcd runs: a running daemon
notices a lifted halt within seconds (it re-reads the halt state while halted)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from cdcd.config import Config
from cdcd.schema_watch.store import SchemaStore, describe_entry

__all__ = ["history", "resume"]


def _table(cfg: Config, table: str) -> str | None:
    names = [t.source for t in cfg.tables]
    if table not in names:
        print(
            f"cdcd: table {table!r} is not in the configuration (tables: {', '.join(names)})", file=sys.stderr
        )
        return None
    return table


async def _with_store(cfg: Config, fn: Any) -> Any:
    from cdcd.app.deps import Dependencies

    deps = Dependencies(cfg)
    client = await deps.connect_redis()
    try:
        return await fn(SchemaStore(client, prefix=cfg.state.key_prefix))
    finally:
        await client.aclose()


def resume(cfg: Config, table: str) -> int:
    """Lift a schema-change halt of ``table``. 0 when lifted or not halted."""
    if _table(cfg, table) is None:
        return 2

    async def go(store: SchemaStore) -> Any:
        return await store.resume(table)

    try:
        was = asyncio.run(_with_store(cfg, go))
    except Exception as exc:
        print(f"cdcd: cannot resume {table}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if was is None:
        print(f"{table} was not halted")
    else:
        print(f"{table} resumed (halted at schema version {was.version}: {was.reason})")
    return 0


def history(cfg: Config, table: str, *, as_json: bool = False, limit: int = 100) -> int:
    """Print the schema versions recorded for ``table``, newest first."""
    if _table(cfg, table) is None:
        return 2

    async def go(store: SchemaStore) -> Any:
        return await store.history(table, limit), await store.halted(table)

    try:
        entries, halt = asyncio.run(_with_store(cfg, go))
    except Exception as exc:
        print(
            f"cdcd: cannot read the schema history of {table}: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1
    rows = [describe_entry(e) for e in entries]
    if as_json:
        print(
            json.dumps({"table": table, "halted": halt.reason if halt else None, "versions": rows}, indent=2)
        )
        return 0
    if not rows:
        print(f"{table}: no schema version recorded yet (cdcd has not run with this table)")
        return 0
    if halt is not None:
        print(f"{table}: HALTED at version {halt.version}: {halt.reason}")
    for r in rows:
        print(f"version {r['version']}  {r['at']}  {'; '.join(r['changes'])}")
        print(f"  columns: {', '.join(r['columns_after']) or '(table dropped)'}")
    return 0

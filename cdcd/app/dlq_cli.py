"""``cdcd dlq <verb>``: the operator's commands on the validation queue, the dead-letter queue and
the staleness audit (``cdcd.app.dlq``), on the same config file as the daemon::

    cdcd dlq list   [--queue validation|dead|stale] [--table T] [--destination D] [--json] --config F
    cdcd dlq show   ID --config F
    cdcd dlq export [filters] --out FILE.jsonl --config F
    cdcd dlq retry  ID... | --all [filters] --config F
    cdcd dlq edit   ID --set column=value [--set ...] --config F
    cdcd dlq drop   ID... | --all [filters] --config F

Exit codes: 0 done; 1 something could not be done (an entry refused again, not found, a
dependency down: the output says which); 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import msgspec

from cdcd.app.deps import Dependencies
from cdcd.app.dlq import DlqTool, RetryResult, describe_error, entry_json
from cdcd.config import Config, TableConfig
from cdcd.ops.logging import configure as configure_logging
from cdcd.schema import TableSchema
from cdcd.sinks import Sink
from cdcd.state.deadletter import DeadLetterStore

__all__ = ["add_parser", "main"]


def add_parser(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list, show, export, retry, edit and drop queued events")
    verbs = dlq.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser, filters: bool = False) -> None:
        p.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
        if filters:
            p.add_argument("--queue", choices=["validation", "dead", "stale"], help="only this queue")
            p.add_argument("--table", help='only this source table ("keyspace.table")')
            p.add_argument("--destination", help="only this destination")

    p = verbs.add_parser("list", help="list entries (oldest first)")
    common(p, True)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = verbs.add_parser("show", help="one entry in full (JSON)")
    common(p)
    p.add_argument("id")
    p = verbs.add_parser("export", help="write entries as JSON lines to a file")
    common(p, True)
    p.add_argument("--out", required=True, help="the .jsonl file to write")
    p = verbs.add_parser("retry", help="resubmit entries as they are")
    common(p, True)
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every entry the filters match")
    p = verbs.add_parser("edit", help="correct column values of an entry, then resubmit it")
    common(p)
    p.add_argument("id")
    p.add_argument("--set", action="append", required=True, metavar="COLUMN=VALUE",
                   help="new value, parsed as the column's CQL type (null for null); repeatable")  # fmt: skip
    p = verbs.add_parser("drop", help="remove entries for good")
    common(p, True)
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every entry the filters match")


def main(cfg: Config, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    configure_logging(level="error", fmt=cfg.logging.format)
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    if args.verb in ("retry", "drop") and bool(args.ids) == bool(args.all):
        print(f"cdcd dlq {args.verb}: give entry ids or --all (with filters), not both", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(cfg, args, out))
    except Exception as exc:
        print(f"cdcd dlq {args.verb}: {describe_error(exc)}", file=sys.stderr)
        return 1


async def _run(cfg: Config, args: argparse.Namespace, out: TextIO) -> int:
    deps = Dependencies(cfg)
    try:
        redis = await deps.connect_redis()
        store = DeadLetterStore(redis, prefix=cfg.state.key_prefix)
        schemas: dict[str, TableSchema] = {}

        async def sink(dest: str) -> Sink:
            return deps.sinks.get(dest) or await deps.connect_sink(dest)

        async def schema(table: TableConfig) -> TableSchema:
            if table.source not in schemas:
                if deps.scylla is None:
                    await deps.connect_scylla()
                schemas[table.source] = await deps.table_schema(table)
            return schemas[table.source]

        tool = DlqTool(cfg, store, sink=sink, schema=schema)
        return await _verb(tool, args, out)
    finally:
        await deps.aclose()


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"queue": args.queue, "table": args.table, "destination": args.destination}


async def _verb(tool: DlqTool, args: argparse.Namespace, out: TextIO) -> int:
    verb = args.verb
    if verb == "list":
        n = 0
        async for entry in tool.entries(**_filters(args)):
            n += 1
            if args.json:
                out.write(json.dumps(entry_json(entry), ensure_ascii=False) + "\n")
            else:
                j = entry_json(entry)
                cols = ",".join(j["columns"]) or "-"
                out.write(f"{j['id']}  {j['rule'] or j['stage']}  {cols}  {j['reason']}\n")
        if not args.json:
            out.write(f"{n} entries\n")
        return 0
    if verb == "show":
        found = await tool.get(args.id)
        if found is None:
            print(f"cdcd dlq show: no entry {args.id}", file=sys.stderr)
            return 1
        out.write(json.dumps(entry_json(found), ensure_ascii=False, indent=2) + "\n")
        return 0
    if verb == "export":
        lines = [
            json.dumps(entry_json(e), ensure_ascii=False) + "\n" async for e in tool.entries(**_filters(args))
        ]
        await asyncio.to_thread(Path(args.out).write_text, "".join(lines), encoding="utf-8")
        out.write(f"{len(lines)} entries written to {args.out}\n")
        return 0
    if verb == "drop":
        entries, missing = await tool.select(args.ids, all_=args.all, **_filters(args))
        dropped = await tool.drop(entries)
        out.write(f"{dropped} entries dropped\n")
        for ident in missing:
            out.write(f"not found: {ident}\n")
        return 1 if missing else 0
    if verb == "retry":
        entries, missing = await tool.select(args.ids, all_=args.all, **_filters(args))
        result = await tool.retry(entries)
        result.missing.extend(missing)
        return _report(result, out)
    if verb == "edit":
        changes: dict[str, str] = {}
        for item in args.set:
            col, sep, value = item.partition("=")
            if not sep or not col:
                print(f"cdcd dlq edit: --set expects COLUMN=VALUE, got {item!r}", file=sys.stderr)
                return 2
            changes[col.strip()] = value
        _, result = await tool.edit(args.id, changes)
        return _report(result, out)
    raise AssertionError(verb)


def _report(result: RetryResult, out: TextIO) -> int:
    out.write(json.dumps(msgspec.to_builtins(result), ensure_ascii=False) + "\n")
    for ident in result.applied:
        out.write(f"applied: {ident}\n")
    for ident in result.stale:
        out.write(f"stale (skipped, recorded in the stale queue): {ident}\n")
    for ident, reason in result.refused.items():
        out.write(f"refused again: {ident}: {reason}\n")
    for ident in result.held:
        out.write(f"held (an earlier change of its key was refused): {ident}\n")
    for ident, why in result.skipped.items():
        out.write(f"skipped: {ident}: {why}\n")
    for ident in result.missing:
        out.write(f"not found: {ident}\n")
    return 1 if result.refused or result.held or result.missing else 0

"""The ``cdcd`` command line: argument handling only; the work is in ``cdcd.app``.

::

    cdcd --version
    cdcd run --config cdcd.toml [--start-at now|earliest|2026-01-31T12:00:00Z] [--backfill]
    cdcd check-config --config cdcd.toml [--offline]
    cdcd resume --config cdcd.toml --table ks.t
    cdcd schema history --config cdcd.toml --table ks.t [--json]
    cdcd vault reveal TOKEN --config cdcd.toml
    cdcd status --config cdcd.toml [--json] [--watch [SECONDS]]
    cdcd dlq list|show|export|retry|edit|drop ... --config cdcd.toml   (cdcd.app.dlq_cli)
    cdcd snapshot --config cdcd.toml --table ks.t [--destination D] [--ranges N] [--restart]
    cdcd reconcile --config cdcd.toml --table ks.t [--destination D] [--repair] [--json] [--ranges N]

Exit codes: 0 success; 1 a dependency check failed or the daemon stopped on an error (or a
second signal forced it out); 2 bad arguments or a bad configuration (the message names the
file and key). ``reconcile``: 0 source and destinations agree, 1 differences found (with
``--repair``: some could not be repaired), 2 errors.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from typing import Any, Literal

from cdcd import __version__

__all__ = ["main", "parse_args", "parse_start_at"]

StartAt = Literal["now", "earliest"] | datetime.datetime


def parse_start_at(text: str) -> StartAt:
    """``"now"``, ``"earliest"`` or an RFC 3339 time with a zone (``2026-01-31T12:00:00Z``)."""
    if text == "now":
        return "now"
    if text == "earliest":
        return "earliest"
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected "now", "earliest" or an RFC 3339 time such as 2026-01-31T12:00:00Z, got {text!r}'
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"the time {text!r} needs a zone (Z or +hh:mm)")
    return when


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdcd", description="Replicate ScyllaDB CDC logs into PostgreSQL, ClickHouse and TimescaleDB."
    )
    parser.add_argument("--version", action="version", version=f"cdcd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the replication daemon")
    run.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    run.add_argument(
        "--start-at",
        type=parse_start_at,
        default=None,
        metavar="WHEN",
        help='where streams without a checkpoint start: "now" (default on a fresh start), "earliest" '
        "(the oldest log entry still kept) or an RFC 3339 time; saved checkpoints always win",
    )
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override logging.level"
    )
    run.add_argument(
        "--backfill",
        action="store_true",
        help="apply events however old: turns off [staleness] max_age (the staleness audit records it)",
    )

    check = sub.add_parser(
        "check-config",
        aliases=["check"],
        help="validate the configuration, then connect to Scylla, Redis and every destination",
    )
    check.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    check.add_argument("--offline", action="store_true", help="only validate the file; connect to nothing")
    check.add_argument(
        "--timeout", type=float, default=15.0, help="seconds per dependency check (default 15)"
    )
    # schema changes (cdcd.schema_watch.commands)
    resume = sub.add_parser("resume", help="resume a table halted by a schema change (schema_changes = halt)")
    resume.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    resume.add_argument("--table", required=True, help="the source table, keyspace.table")
    schema = sub.add_parser("schema", help="schema versions of a source table")
    schema_sub = schema.add_subparsers(dest="schema_command", required=True, metavar="SUBCOMMAND")
    hist = schema_sub.add_parser("history", help="the recorded schema versions of a table, newest first")
    hist.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    hist.add_argument("--table", required=True, help="the source table, keyspace.table")
    hist.add_argument("--json", action="store_true", help="print JSON")
    vault = sub.add_parser("vault", help="the token vault of masking (strategy tokenize)")
    vault_sub = vault.add_subparsers(dest="vault_command", required=True, metavar="ACTION")
    reveal = vault_sub.add_parser(
        "reveal", help="print the original value behind a token (needs the vault key)"
    )
    reveal.add_argument("token", help='a token as found in a destination ("tok_...")')
    reveal.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    status = sub.add_parser(
        "status",
        help="print the cluster from Redis: replicas, who owns each stream group, lag, unowned groups",
    )
    status.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
        help="print it again every SECONDS (default 2) until Ctrl-C",
    )  # fmt: skip
    from cdcd.app.dlq_cli import add_parser as add_dlq_parser

    add_dlq_parser(sub)  # cdcd dlq list|show|export|retry|edit|drop (cdcd.app.dlq_cli)
    _snapshot_parsers(sub)
    return parser


def _snapshot_parsers(sub: Any) -> None:
    snap = sub.add_parser("snapshot", help="copy a table's existing rows into its destinations")
    snap.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    snap.add_argument("--table", required=True, help='the source table, "keyspace.table"')
    snap.add_argument("--destination", help="only this destination (default: all of the table's)")
    snap.add_argument(
        "--ranges", type=_positive, default=64, help="token ranges (default 64; fixed once started)"
    )
    snap.add_argument("--workers", type=_positive, default=None, help="ranges read at once")
    snap.add_argument("--restart", action="store_true", help="forget saved progress and start over")
    snap.add_argument("--quiet", action="store_true", help="no progress bar")
    rec = sub.add_parser("reconcile", help="compare a table with its destinations (and repair them)")
    rec.add_argument("--config", "-c", required=True, help="path of cdcd.toml")
    rec.add_argument("--table", required=True, help='the source table, "keyspace.table"')
    rec.add_argument("--destination", help="only this destination (default: all of the table's)")
    rec.add_argument("--repair", action="store_true", help="re-apply source rows and delete extra rows")
    rec.add_argument("--json", action="store_true", help="one JSON object per differing row, then a summary")
    rec.add_argument("--ranges", type=_positive, default=64, help="token ranges compared (default 64)")
    rec.add_argument(
        "--settle", type=float, default=30.0,
        help="seconds rows may take to converge while cdcd replicates before they are reported (default 30)",
    )  # fmt: skip
    rec.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from cdcd import app
    from cdcd.config import load
    from cdcd.errors import ConfigError

    try:
        config = load(args.config)
    except ConfigError as exc:
        errors = getattr(exc, "errors", [exc])
        for error in errors:
            print(f"cdcd: configuration error: {error}", file=sys.stderr)
        if len(errors) > 1:
            print(f"cdcd: {len(errors)} configuration errors; nothing was started", file=sys.stderr)
        return 2
    if args.command in ("resume", "schema"):
        from cdcd.schema_watch import commands

        if args.command == "resume":
            return commands.resume(config, args.table)
        return commands.history(config, args.table, as_json=args.json)
    if args.command == "vault":
        from cdcd.masking.cli import reveal

        return reveal(config, args.token)
    if args.command == "dlq":
        from cdcd.app.dlq_cli import main as dlq_main

        return dlq_main(config, args)
    if args.command in ("snapshot", "reconcile"):
        from cdcd.snapshot.commands import main as snapshot_main

        return snapshot_main(config, args)
    if args.command == "run":
        return app.run(
            config, config_file=args.config, start_at=args.start_at, log_level=args.log_level,
            backfill=args.backfill,
        )  # fmt: skip
    if args.command == "status":
        from cdcd.app.cluster import print_status, watch_status

        if args.watch is not None:
            return watch_status(config, interval=max(0.2, args.watch))
        return print_status(config, as_json=args.json)
    return app.check(config, config_file=args.config, offline=args.offline, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())

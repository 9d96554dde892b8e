"""The daemon: ``startup -> main loop -> graceful shutdown`` (uvicorn ``server.py`` shape).

``run()`` (``cdcd run``) installs uvloop and serves a ``Daemon``:

* startup: the HTTP endpoint starts first (``/healthz`` answers, ``/readyz`` says 503 until
  running); then Redis, Scylla and every destination are connected with retries (backoff from
  ``[pipeline.retry]``; a dependency that is down is waited for, R-42); each table's schema is read
  and its target tables ensured.
* main loop: one supervisor per (table, destination) runs that destination's ``Branch`` of every
  stream group of the oldest unfinished generation; the branches of a group share one
  ``SharedReader`` (started by the first branch that needs it), which reads and decodes the log
  once for all of them (``cdcd.flow.reader``). When all groups of a generation are done for a
  destination (closed and fully applied) its supervisor moves on to the next one (generation
  switch). A branch that stops on an error is restarted from its checkpoint after a growing pause
  (joining its group's reader again, catching up first if it is behind).
* leases (``cdcd.app.leases``): a group's branches run only while this replica holds the
  group's lease in Redis; replicas on one configuration share the groups (fair share, hand-over
  to a new replica, takeover of a dead one's groups, work stopped before a lease that cannot be
  renewed expires). Checkpoints are fenced by the lease token.
* reload (``cdcd.app.reload``): SIGHUP or ``POST /admin/reload`` re-reads the config file; live
  changes restart the (table, destination) pairs they touch, non-live ones refuse the reload.
* shutdown: the first SIGTERM/SIGINT stops reading, drains in-flight batches and saves checkpoints
  within ``pipeline.shutdown_timeout``, then exits 0; a second signal abandons everything at once
  (exit 1), also while the process winds down after its shutdown (no traceback either way).
  Nothing is lost: pipelines resume from their checkpoints.

Start position (R-03): a stream without a checkpoint starts at the *start floor* of its (table,
destination), fixed at the very first start ("now") and kept in Redis under
``<prefix>:start:<destination>:<table>``; so a crash before the first checkpoint, or a generation
that began while cdcd was down, loses nothing. ``--start-at`` replaces the floor.

``check()`` (``cdcd check-config``) connects to each dependency once and prints the results.
``cdcd status`` (``cdcd.app.cluster``) prints the cluster from Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from cdcd.app.daemon import Daemon, StartAt
from cdcd.app.deps import Dependencies, SinkFactory, check_dependencies
from cdcd.config import Config
from cdcd.config.endpoints import endpoints
from cdcd.ops import emit
from cdcd.ops.logging import configure as configure_logging

__all__ = ["Daemon", "Dependencies", "SinkFactory", "check", "check_dependencies", "run"]


def _exit_at_once(signum: int, frame: object) -> None:
    """SIGTERM/SIGINT while ``cdcd run`` is not serving: before the daemon installs its handlers,
    or after its shutdown completed while the process winds down (event loop teardown, driver
    threads). Exit at once (code 1, as a second signal does) instead of the default: killed by
    the signal, or a KeyboardInterrupt traceback from wherever the loop's teardown was."""
    os._exit(1)


def run(
    cfg: Config,
    *,
    config_file: str,
    start_at: StartAt = None,
    log_level: str | None = None,
    backfill: bool = False,
) -> int:
    """``cdcd run``: configure logging, install uvloop, serve until stopped; the exit code."""
    import uvloop

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_at_once)  # the daemon's own handlers replace it while it serves
    configure_logging(level=log_level or cfg.logging.level, fmt=cfg.logging.format)
    emit.config_loaded(config_file=config_file)
    daemon = Daemon(cfg, config_file=config_file, start_at=start_at, backfill=backfill)
    code: int = uvloop.run(daemon.serve())
    return code


def check(cfg: Config, *, config_file: str, offline: bool = False, timeout: float = 15.0) -> int:
    """``cdcd check-config``: print what was validated and each dependency's health."""
    configure_logging(level="error", fmt=cfg.logging.format)
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)  # its failures are in the report
    print(f"config {config_file}: ok ({len(cfg.tables)} tables, destinations: {', '.join(cfg.destinations)})")
    where = endpoints(cfg)
    print("endpoints (not contacted: --offline):" if offline else "endpoints:")
    pad = max(len(name) for name, _ in where)
    for name, text in where:
        print(f"  {name:<{pad}}  {text}")
    if offline:
        return 0
    results = asyncio.run(check_dependencies(cfg, limit=timeout))
    width = max(len(name) for name, _ in results)
    for name, result in results:
        mark = "ok  " if result.ok else "FAIL"
        print(f"{mark} {name:<{width}}  {result.detail} ({result.seconds:.2f} s)")
    failed = [name for name, r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} checks failed", file=sys.stderr)
        return 1
    return 0

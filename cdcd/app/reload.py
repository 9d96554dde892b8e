"""Live configuration (R-51): what a reload may change, and the config fingerprint.

``plan(old, new)`` compares two configurations key by key and sorts every changed key:

* **Refused** (``NON_LIVE``): what the running process is built on: the Scylla connection
  (``source.hosts``, credentials, TLS, timeouts, consistency), Redis (``state.redis_url``,
  ``state.key_prefix``, ``state.lease_ttl``, ...), the HTTP endpoint, ``instance``, ``logging``,
  ``tracing``, and the connection settings of a destination that stays (its ``dsn``, ``url``,
  pool...). One refused key refuses the whole reload: the old configuration stays in force, and
  the log line names every refused key.
* **Live**: tables and destinations added or removed, a table's destinations / delete strategy /
  target, a destination's batch overrides and ``create_tables``, everything under ``[pipeline]``
  (batch, retry, breaker, queue sizes, ...), ``state.checkpoint_interval``/``checkpoint_every``,
  the reading knobs of ``[source]`` (windows, polls, fetch size, read caps) and any other
  top-level section not listed in ``NON_LIVE`` (all pairs restart for those). The daemon
  applies them by draining and restarting the (table, destination) pairs they touch
  (``Plan.restart``), stopping removed pairs and starting added ones; each restart resumes from
  its checkpoint, so nothing is lost or applied twice.

``fingerprint(cfg)``: a short hash of everything replicas must agree on (not ``instance``,
``http``, ``logging``, ``tracing``: those may differ per replica). Each replica publishes it in
its heartbeat; replicas that differ are shown in ``/status`` and ``cdcd status`` and logged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from cdcd.config import Config, Duration, Secret

__all__ = ["NON_LIVE", "Plan", "changed_keys", "fingerprint", "plan"]

# Keys (dotted prefixes) that cannot change while running.
NON_LIVE: tuple[str, ...] = (
    "source.hosts", "source.username", "source.password", "source.password_file", "source.local_dc",
    "source.consistency", "source.request_timeout", "source.connect_timeout", "source.tls",
    "source.tablet_group_size",
    "state.redis_url", "state.redis_url_file", "state.key_prefix", "state.connect_timeout",
    "state.ca_file", "state.cert_file", "state.key_file", "state.lease_ttl",
    "http", "instance", "logging", "tracing",
    # masking's keys and its vault (the rules, [[masking.rules]] and [tables.masking], are live)
    "masking.hash_key", "masking.hash_key_file", "masking.vault_key", "masking.vault_key_file",
    "masking.vault_dsn", "masking.vault_dsn_file", "masking.vault_table",
)  # fmt: skip

# Settings of an existing destination that a reload may change (the rest is its connection).
_LIVE_DESTINATION_KEYS = ("batch_max_rows", "batch_max_wait", "create_tables")
# Per-replica sections left out of the fingerprint.
_PER_REPLICA = ("instance", "http", "logging", "tracing")


@dataclass
class Plan:
    """What a reload from ``old`` to ``new`` means."""

    refused: list[str] = field(default_factory=list)  # non-live keys that changed
    changes: list[str] = field(default_factory=list)  # every changed key
    added: set[tuple[str, str]] = field(default_factory=set)  # (table, destination) to start
    removed: set[tuple[str, str]] = field(default_factory=set)  # ... to stop
    restart: set[tuple[str, str]] = field(default_factory=set)  # ... to drain and start again
    new_tables: list[str] = field(default_factory=list)  # source tables not replicated before
    destinations: set[str] = field(default_factory=set)  # destinations added or changed


def _plain(obj: Any) -> Any:
    def enc(o: Any) -> Any:
        if isinstance(o, Secret):
            return {"secret": hashlib.sha256(o.get().encode()).hexdigest()}
        if isinstance(o, Duration):
            return float(o)
        if isinstance(o, str):
            return str.__str__(o)
        raise NotImplementedError(type(o))

    return msgspec.to_builtins(obj, enc_hook=enc)


def _walk(path: str, a: Any, b: Any) -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict) and "secret" not in a:
        for k in sorted(set(a) | set(b), key=str):
            yield from _walk(f"{path}.{k}" if path else str(k), a.get(k), b.get(k))
    elif a != b:
        yield path


def changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ (lists compare whole)."""
    return list(_walk(path, _plain(old), _plain(new)))


def _pairs(cfg: Config) -> set[tuple[str, str]]:
    return {(t.source, d) for t in cfg.tables for d in t.destinations}


def plan(old: Config, new: Config) -> Plan:
    """Sort the differences between ``old`` and ``new`` (see the module docstring)."""
    out = Plan()
    top = {k: v for k, v in msgspec.structs.asdict(old).items() if k not in ("destinations", "tables")}
    for section in top:
        for key in changed_keys(getattr(old, section), getattr(new, section), section):
            out.changes.append(key)
            if any(key == p or key.startswith(p + ".") for p in NON_LIVE):
                out.refused.append(key)
    # any other section that changed (pipeline, the live part of state and source, sections added
    # later): every pair restarts with the new configuration
    restart_all = bool(out.changes)
    for name in sorted(set(old.destinations) | set(new.destinations)):
        was, now = old.destinations.get(name), new.destinations.get(name)
        if was is None or now is None:
            out.changes.append(f"destinations.{name}")
            if now is not None:
                out.destinations.add(name)
            continue
        keys = changed_keys(was, now, f"destinations.{name}")
        if type(was) is not type(now):
            keys = keys or [f"destinations.{name}.type"]
            out.refused.append(f"destinations.{name}.type")
        out.changes += keys
        for key in keys:
            if key.split(".")[2] not in _LIVE_DESTINATION_KEYS and key not in out.refused:
                out.refused.append(key)
        if keys:
            out.destinations.add(name)
    old_tables = {t.source: t for t in old.tables}
    new_tables = {t.source: t for t in new.tables}
    changed_tables = set()
    for source in sorted(set(old_tables) | set(new_tables)):
        was_t, now_t = old_tables.get(source), new_tables.get(source)
        if was_t is None:
            out.changes.append(f"tables[{source}] added")
            out.new_tables.append(source)
        elif now_t is None:
            out.changes.append(f"tables[{source}] removed")
        else:
            keys = changed_keys(was_t, now_t, f"tables[{source}]")
            out.changes += keys
            if keys:
                changed_tables.add(source)
    before, after = _pairs(old), _pairs(new)
    out.added = after - before
    out.removed = before - after
    for pair in before & after:
        if restart_all or pair[0] in changed_tables or pair[1] in out.destinations:
            out.restart.add(pair)
    # a table whose destinations changed: its shared reader waits for a new set of branches
    for table in changed_tables:
        out.restart |= {p for p in before & after if p[0] == table}
    return out


def fingerprint(cfg: Config) -> str:
    """Hash of what every replica must agree on (16 hex digits)."""
    data = {k: v for k, v in _plain(cfg).items() if k not in _PER_REPLICA}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""Working the validation queue, the dead-letter queue and the staleness audit (R-23, R-61):
what ``cdcd dlq ...`` and ``/admin/dlq/...`` do. Talks to Redis directly and writes through the
destination's sink, so it works while daemons run (and while none does).

Entry ids shown to operators are ``<queue>/<destination>/<entry id>`` (the entry id is the
event's table, stream, cdc$time and batch_seq), e.g.
``validation/pg/shop.orders/0a1b.../6f1c...-...-.../0``.

Resubmitting (``retry``, ``edit``) an entry:

1. marks it as being retried (Redis), then runs its event through the destination branch's
   stages again (ignored columns, the validator against the table's current definition) and,
   if it passes, writes it with the sink's version guard, exactly as the daemon would;
2. applied: the entry (and its mark) is removed in one transaction;
   refused again: the entry stays, with the new reason, rule, attempts + 1 and last-seen time;
   skipped by the version guard (the destination row holds a newer change, or this one): the
   entry is removed and recorded in the ``stale`` audit, unless its mark shows an earlier
   resubmission was interrupted after its write (kill -9), which then already applied it.
   Running the same retry twice, or again after a crash, therefore applies it once: the write is
   idempotent and an entry leaves its queue only when applied (or dropped);
3. entries of one table key are resubmitted oldest first; once one of them is refused, the
   later ones of that key stay queued (``on_invalid = "quarantine_key"`` keeps its promise).

Undecodable CDC log groups (``dead`` queue, rule ``undecodable``) hold raw log rows, not an
event: they can be shown, exported and dropped, not resubmitted.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import msgspec

from cdcd.app.validation import branch_stages, project, table_options
from cdcd.config import Config, TableConfig
from cdcd.errors import BadRows, CdcdError, ConfigError
from cdcd.events import ChangeEvent, CqlDuration
from cdcd.flow.writer import stale_reason
from cdcd.schema import CqlType, TableSchema
from cdcd.sinks import Sink, TableMapping
from cdcd.stages import Chain
from cdcd.stages.validate import key_text
from cdcd.state.deadletter import KINDS, DeadLetter, DeadLetterStore, Kind

__all__ = ["DlqTool", "RetryResult", "entry_json", "parse_cql_value", "public_id"]

UNDECODABLE = "undecodable"


def public_id(entry: DeadLetter) -> str:
    return f"{entry.kind}/{entry.destination}/{entry.id}"


def split_id(text: str) -> tuple[Kind, str, str]:
    parts = text.split("/", 2)
    if len(parts) != 3 or parts[0] not in KINDS or not parts[1] or not parts[2]:
        raise ValueError(
            f"{text!r} is not an entry id (<queue>/<destination>/<entry>, as `cdcd dlq list` shows)"
        )
    kind: Kind = "dead" if parts[0] == "dead" else "stale" if parts[0] == "stale" else "validation"
    return kind, parts[1], parts[2]


def plain(v: Any) -> Any:
    """A value as JSON: UUIDs, decimals and times as text, bytes as base64, tuples/sets as lists."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, bytes):
        return "base64:" + base64.b64encode(v).decode()
    if isinstance(v, CqlDuration):
        return {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
    if isinstance(v, dict):
        return {str(plain(k)) if not isinstance(k, str) else k: plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set | frozenset):
        return [plain(x) for x in v]
    return repr(v)


def entry_json(entry: DeadLetter) -> dict[str, Any]:
    """One entry as ``cdcd dlq list --json`` prints it."""
    ev = entry.event
    return {
        "id": public_id(entry),
        "queue": entry.kind,
        "table": entry.table,
        "destination": entry.destination,
        "reason": entry.reason,
        "rule": entry.rule,
        "stage": entry.stage,
        "columns": list(entry.columns),
        "key": plain(ev.key),
        "values": plain(ev.values),
        "deleted": sorted(ev.deleted),
        "op": ev.op.name.lower(),
        "write_time_us": ev.write_time_us,
        "attempts": entry.attempts,
        "first_seen": dt.datetime.fromtimestamp(entry.first_failed_at, dt.UTC).isoformat(),
        "last_seen": dt.datetime.fromtimestamp(entry.last_failed_at, dt.UTC).isoformat(),
    }


def parse_cql_value(t: CqlType, text: str) -> Any:
    """``text`` as a value of CQL type ``t`` in cdcd's canonical form (``null`` is null).
    ValueError naming the type when it does not parse; collections and UDTs are not supported."""
    if text == "null":
        return None
    name = t.name
    try:
        if name in ("ascii", "text", "varchar"):
            return text
        if name in ("tinyint", "smallint", "int", "bigint", "varint", "counter"):
            return int(text)
        if name == "decimal":
            return decimal.Decimal(text)
        if name in ("float", "double"):
            return float(text)
        if name == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        if name in ("uuid", "timeuuid"):
            return uuid.UUID(text)
        if name == "timestamp":
            when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
            return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        if name == "date":
            return dt.date.fromisoformat(text)
        if name == "inet":
            return str(ipaddress.ip_address(text))
        if name == "blob":
            return bytes.fromhex(text.removeprefix("0x"))
        if name == "time":
            return int(text)
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(f"{text!r} is not a CQL {t.cql()} value: {exc}") from None
    raise ValueError(f"cdcd dlq edit cannot set CQL {t.cql()} columns (only scalar types)")


class RetryResult(msgspec.Struct, kw_only=True):
    """What a resubmission did, per entry id: applied, stale (recorded), refused (still queued,
    with the reason), held (a refused earlier change of the same key), skipped (not resubmittable)."""

    applied: list[str] = []
    stale: list[str] = []
    refused: dict[str, str] = {}
    held: list[str] = []
    skipped: dict[str, str] = {}
    missing: list[str] = []


class _Target:
    def __init__(self, sink: Sink, mapping: TableMapping, chain: Chain) -> None:
        self.sink = sink
        self.mapping = mapping
        self.chain = chain


class DlqTool:
    """The operations behind ``cdcd dlq`` and ``/admin/dlq``.

    ``sink(dest)`` returns the destination's connected sink; ``schema(table)`` the source table's
    schema (both cached by the caller: the daemon's own, or ``Dependencies`` in the CLI)."""

    def __init__(
        self,
        cfg: Config,
        store: DeadLetterStore,
        *,
        sink: Callable[[str], Awaitable[Sink]],
        schema: Callable[[TableConfig], Awaitable[TableSchema]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self._sink = sink
        self._schema = schema
        self.clock = clock
        self._targets: dict[tuple[str, str], _Target] = {}

    # ---------------------------------------------------------------------------- reading
    def _table(self, source: str) -> TableConfig:
        for t in self.cfg.tables:
            if t.source == source:
                return t
        raise ConfigError(f"table {source} is not configured")

    async def entries(
        self, *, queue: str | None = None, table: str | None = None, destination: str | None = None
    ) -> AsyncIterator[DeadLetter]:
        """Entries matching the filters, queue by queue, destination by destination, oldest first."""
        kinds = KINDS if queue is None else (split_id(f"{queue}/x/x")[0],)
        if destination is not None and destination not in self.cfg.destinations:
            raise ConfigError(
                f"unknown destination {destination!r}; configured: {', '.join(self.cfg.destinations)}"
            )
        for kind in kinds:
            dests = [destination] if destination else sorted(
                set(self.cfg.destinations) | set(await self.store.destinations(kind))
            )  # fmt: skip
            for dest in dests:
                async for entry in self.store.iterate(kind, dest, table=table):
                    yield entry

    async def get(self, ident: str) -> DeadLetter | None:
        kind, dest, eid = split_id(ident)
        return await self.store.get(kind, dest, eid)

    async def select(
        self,
        ids: Iterable[str] = (),
        *,
        all_: bool = False,
        queue: str | None = None,
        table: str | None = None,
        destination: str | None = None,
    ) -> tuple[list[DeadLetter], list[str]]:
        """The entries named by ``ids`` (and the ids not found), or with ``all_`` every entry the
        filters match."""
        if all_:
            return [e async for e in self.entries(queue=queue, table=table, destination=destination)], []
        found: list[DeadLetter] = []
        missing: list[str] = []
        for ident in ids:
            entry = await self.get(ident)
            if entry is None:
                missing.append(ident)
            else:
                found.append(entry)
        return found, missing

    # ---------------------------------------------------------------------------- changing
    async def drop(self, entries: Iterable[DeadLetter]) -> int:
        dropped = 0
        for entry in entries:
            if await self.store.resolve(entry):
                dropped += 1
        return dropped

    async def edit(self, ident: str, changes: Mapping[str, str]) -> tuple[DeadLetter, RetryResult]:
        """Set column values of an entry's event (``column -> text``, parsed as the column's CQL
        type; key columns cannot change), store it, then resubmit it."""
        entry = await self.get(ident)
        if entry is None:
            raise KeyError(f"no entry {ident}")
        if entry.rule == UNDECODABLE:
            raise ValueError(f"{ident} is an undecodable CDC log group: there is no event to edit")
        schema = await self._schema(self._table(entry.table))
        values = dict(entry.event.values)
        deleted = set(entry.event.deleted)
        for col, text in changes.items():
            try:
                column = schema.column(col)
            except (KeyError, LookupError, ValueError):
                raise ValueError(f"{entry.table} has no column {col!r}") from None
            if column.kind in ("partition_key", "clustering"):
                raise ValueError(f"{col} is a primary key column: a corrected key would be another row")
            values[col] = parse_cql_value(column.type, text)
            deleted.discard(col)
        event = msgspec.structs.replace(entry.event, values=values, deleted=frozenset(deleted))
        edited = msgspec.structs.replace(entry, event=event, reason=f"edited: {entry.reason}")
        await self.store.update(edited)
        return edited, await self.retry([edited])

    async def _target(self, table: TableConfig, dest: str) -> _Target:
        target = self._targets.get((table.source, dest))
        if target is None:
            sink = await self._sink(dest)
            schema = project(await self._schema(table), table.ignore_columns)
            mapping = table_options(
                TableMapping(
                    source=table.source, target_schema=table.target_schema, target_table=table.target_table,
                    delete=table.delete, create=self.cfg.destinations[dest].create_tables,
                ),
                table, dest, self.cfg,
            )  # fmt: skip
            await sink.ensure_table(mapping, schema)
            # the validator of a resubmission holds no keys back: entries go oldest first per key
            plain_table = msgspec.structs.replace(table, on_invalid="skip")
            stages = await branch_stages(plain_table, dest, sink, mapping, schema, deadletters=None)
            target = self._targets[(table.source, dest)] = _Target(sink, mapping, Chain(stages))
        return target

    async def retry(self, entries: Iterable[DeadLetter]) -> RetryResult:
        """Resubmit entries (see the module docstring). ``SinkUnavailable`` and Redis errors
        propagate: what was not resolved stays queued."""
        result = RetryResult()
        blocked: set[tuple[str, str, str]] = set()  # (destination, table, key) refused in this run
        ordered = sorted(
            entries, key=lambda e: (e.destination, e.table, e.event.write_time_us, e.event.batch_seq)
        )
        for entry in ordered:
            ident = public_id(entry)
            if entry.rule == UNDECODABLE:
                result.skipped[ident] = (
                    "an undecodable CDC log group cannot be resubmitted (show/export, then drop)"
                )
                continue
            if entry.kind == "stale":
                result.skipped[ident] = "a staleness audit record is not resubmitted (drop it when read)"
                continue
            key = (entry.destination, entry.table, key_text(entry.event.key))
            if key in blocked:
                result.held.append(ident)
                continue
            outcome = await self._resubmit(entry)
            if outcome == "applied":
                result.applied.append(ident)
            elif outcome == "stale":
                result.stale.append(ident)
            elif outcome == "missing":
                result.missing.append(ident)
            else:
                result.refused[ident] = outcome
                blocked.add(key)
        return result

    async def _resubmit(self, entry: DeadLetter) -> str:
        if await self.store.get(entry.kind, entry.destination, entry.id) is None:
            return "missing"  # resolved meanwhile (another retry, a drop)
        table = self._table(entry.table)
        if entry.destination not in table.destinations:
            raise ConfigError(f"{entry.table} is no longer sent to destination {entry.destination}")
        target = await self._target(table, entry.destination)
        now = self.clock()
        interrupted = await self.store.mark_retrying(entry, now)
        passed, rejected = target.chain.run([entry.event])
        if rejected:
            r = rejected[0]
            await self._refused(
                entry, r.reason, getattr(r, "rule", "") or r.stage, getattr(r, "columns", ()), now
            )
            return r.reason
        event: ChangeEvent = passed[0]
        try:
            outcome = await target.sink.write(target.mapping, [event])
        except BadRows as exc:
            reason = next(iter(exc.errors.values()), str(exc))
            await self._refused(entry, reason, "destination", entry.columns, now)
            return reason
        if outcome.applied:
            await self.store.resolve(entry)
            return "applied"
        skip = next(iter(getattr(outcome, "skipped", ())), None)  # cdcd.sinks.Skipped
        if interrupted or (skip is not None and skip.reason == "duplicate"):
            # the interrupted attempt (or an earlier write) stored exactly this change: applied once
            await self.store.resolve(entry)
            return "applied"
        why = "stale: the destination row holds a newer change than this resubmitted one; skipped"
        if skip is not None:  # both write times (and versions), as the writer's audit entries
            why = stale_reason(entry.event, skip.row_write_time_us, skip.row_version)
        audit = DeadLetterStore.make(
            "stale", entry.destination, entry.event,
            reason=why,
            stage="resubmit", attempts=entry.attempts + 1, first_failed_at=now,
            columns=entry.columns, rule="stale",
        )  # fmt: skip
        await self.store.resolve(entry, audit=audit)
        return "stale"

    async def _refused(
        self, entry: DeadLetter, reason: str, rule: str, columns: Iterable[str], now: float
    ) -> None:
        await self.store.update(
            msgspec.structs.replace(
                entry, reason=reason, rule=rule, columns=tuple(columns), attempts=entry.attempts + 1,
                last_failed_at=now,
            )
        )  # fmt: skip
        await self.store.unmark(entry)


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CdcdError | ValueError | KeyError) else f"{type(exc).__name__}: {exc}"

"""The validator stage: each event checked against one destination's real table before the write
(R-20, R-31). Runs in that destination's ``Branch`` (``cdcd.flow.branch``); pure and synchronous.

What is checked, per column present in the event (key columns always; for deletes only the key):

* the destination's definition (``cdcd.stages.targets``): NOT NULL (an explicit null or a deleted
  cell), text length (``varchar(n)``/``char(n)`` in characters, ``FixedString(n)`` in UTF-8
  bytes), U+0000 in PostgreSQL text/json, enum labels, integer width, decimal precision/scale
  (a value that would be rounded is refused: conversions are exact or refused), 4-byte float
  range, date/time ranges, and for text going into ``json``/``jsonb``, ``timestamptz``/
  ``DateTime64``, ``date``/``Date32``, ``uuid``, ``inet``/``IPv6``: that it parses;
* the evaluable CHECK constraints of a PostgreSQL table;
* the table's per-column rules from the config (``[tables.columns.<name>]``): ``not_null``,
  ``max_length`` (characters), ``pattern`` (a regular expression the whole text must match),
  ``min``/``max`` (numbers, inclusive), ``allowed`` (the value must equal one of them).

A refused event becomes a ``Invalid`` rejection (original event, columns, rule, reason); the
branch writes it to that destination's validation queue and writes the rest of the batch at once.

``on_invalid = "quarantine_key"``: once a change of a primary key was refused, later changes of
that key are refused too (rule ``quarantine``) until the operator resolves the entry; the keys
held are seeded from the validation queue at start-up (``quarantined``); the daemon calls
``refresh`` every few seconds with the keys still queued, so a key whose entries the operator
retried or dropped (``cdcd dlq``) flows again.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from cdcd.events import ChangeEvent, Op
from cdcd.stages import StageResult
from cdcd.stages.targets import Check, TargetColumn, TargetTable

__all__ = ["ColumnRule", "DropColumns", "Invalid", "Validator", "key_text"]

_FLOAT32_MAX = 3.4028234663852886e38
_DELETES = frozenset(
    {Op.ROW_DELETE, Op.PARTITION_DELETE, Op.RANGE_DELETE, Op.SERVICE_ROW_DELETE, Op.SERVICE_PARTITION_DELETE}
)


class Invalid(msgspec.Struct, frozen=True, kw_only=True):
    """An event the validator refused: ``columns`` and ``rule`` of the first problem, ``reason``
    naming every problem found."""

    event: ChangeEvent
    stage: str
    reason: str
    columns: tuple[str, ...]
    rule: str


class ColumnRule(msgspec.Struct, frozen=True, kw_only=True):
    """Per-column rules of the config (``[tables.columns.<name>]``)."""

    not_null: bool = False
    max_length: int | None = None
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    allowed: tuple[Any, ...] | None = None


Problem = tuple[str, str]  # (rule, reason)
CheckFn = Callable[[Any], Problem | None]


def key_text(key: Mapping[str, Any]) -> str:
    """A primary key as stable text (quarantine sets, logs)."""
    return json.dumps({k: str(v) for k, v in sorted(key.items())}, sort_keys=True)


def _num(v: Any) -> decimal.Decimal | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | decimal.Decimal):
        return decimal.Decimal(v)
    if isinstance(v, float) and math.isfinite(v):
        return decimal.Decimal(repr(v))
    return None


def _digits(d: decimal.Decimal) -> tuple[int, int]:
    """(digits before the point, digits after it) of a finite decimal, trailing zeros ignored."""
    d = d.normalize() if d != 0 else decimal.Decimal(0)
    _sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    n = len(digits)
    after = max(0, -exp)
    before = max(0, n + exp)
    return before, after


def _parse_ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)


def _compile_target(col: TargetColumn, where: str) -> list[CheckFn]:
    """Checks of one destination column against a non-null value."""
    fns: list[CheckFn] = []
    name = f"{where}.{col.name} ({col.type})"

    if col.kind in ("text", "json") and col.nul_free:

        def nul(v: Any) -> Problem | None:
            if isinstance(v, str) and "\x00" in v:
                return "type", f"holds U+0000, which {name} cannot store"
            return None

        fns.append(nul)
    if col.kind == "text" and col.max_length is not None:
        limit, in_bytes = col.max_length, col.length_in_bytes

        def length(v: Any) -> Problem | None:
            if isinstance(v, str | bytes):
                n = len(v.encode()) if in_bytes and isinstance(v, str) else len(v)
                if n > limit:
                    unit = "bytes" if in_bytes else "characters"
                    return "max_length", f"is {n} {unit} long; {name} holds at most {limit}"
            return None

        fns.append(length)
    if col.labels is not None:
        labels = frozenset(col.labels)

        def label(v: Any) -> Problem | None:
            if isinstance(v, str) and v not in labels:
                return "allowed", f"{v!r:.60} is not a label of {name}"
            return None

        fns.append(label)
    if col.kind == "int" and col.int_range is not None:
        lo, hi = col.int_range

        def int_range(v: Any) -> Problem | None:
            if isinstance(v, int) and not isinstance(v, bool) and not lo <= v <= hi:
                return "range", f"{v} is outside {name} ({lo}..{hi})"
            if isinstance(v, decimal.Decimal | float):
                d = _num(v)
                if d is None or d != d.to_integral_value() or not lo <= d <= hi:
                    return "range", f"{v} is not an integer in {lo}..{hi} for {name}"
            return None

        fns.append(int_range)
    if col.kind == "decimal":
        p, s = col.precision, col.scale

        def dec(v: Any) -> Problem | None:
            if isinstance(v, bool) or not isinstance(v, int | float | decimal.Decimal):
                return None
            d = _num(v)
            if d is None:
                return "type", f"{v} is not a finite number for {name}"
            before, after = _digits(d)
            if s is not None and after > s:
                return (
                    "scale",
                    f"{v} has {after} digits after the point; {name} keeps {s} (it would be rounded)",
                )
            if p is not None and before > p - (s or 0):
                return (
                    "precision",
                    f"{v} has {before} digits before the point; {name} holds at most {p - (s or 0)}",
                )
            return None

        fns.append(dec)
    if col.kind == "float" and col.float32:

        def f32(v: Any) -> Problem | None:
            if isinstance(v, float | int | decimal.Decimal) and not isinstance(v, bool):
                f = float(v)
                if math.isfinite(f) and abs(f) > _FLOAT32_MAX:
                    return "range", f"{v} is outside the range of {name}"
            return None

        fns.append(f32)
    if col.kind == "json":

        def js(v: Any) -> Problem | None:
            if isinstance(v, str):
                try:
                    msgspec.json.decode(v)
                except msgspec.DecodeError as exc:
                    return "json", f"is not JSON ({exc}) for {name}"
                if "\\u0000" in v:
                    return "type", f"holds \\u0000, which {name} cannot store"
            return None

        fns.append(js)
    if col.kind in ("timestamp", "date"):
        rng = col.date_range
        is_date = col.kind == "date"

        def when(v: Any) -> Problem | None:
            day: dt.date | None = None
            if isinstance(v, str):
                try:
                    day = dt.date.fromisoformat(v) if is_date else _parse_ts(v).date()
                except ValueError:
                    what = "an ISO-8601 date" if is_date else "an ISO-8601 time"
                    return "type", f"{v!r:.60} is not {what} for {name}"
            elif isinstance(v, dt.datetime):
                day = v.date()
            elif isinstance(v, dt.date):
                day = v
            if day is not None and rng is not None and not rng[0] <= day <= rng[1]:
                return "range", f"{v} is outside {name} ({rng[0]}..{rng[1]})"
            return None

        fns.append(when)
    if col.kind == "uuid":

        def uid(v: Any) -> Problem | None:
            if isinstance(v, str):
                try:
                    uuid.UUID(v)
                except ValueError:
                    return "type", f"{v!r:.60} is not a UUID for {name}"
            return None

        fns.append(uid)
    if col.kind == "inet":
        v4_only = col.type.endswith("IPv4") or col.type.endswith("IPv4)")

        def ip(v: Any) -> Problem | None:
            if isinstance(v, str):
                try:
                    addr = ipaddress.ip_interface(v) if "/" in v else ipaddress.ip_address(v)
                except ValueError:
                    return "type", f"{v!r:.60} is not an IP address for {name}"
                if v4_only and addr.version != 4:
                    return "type", f"{v!r:.60} is not an IPv4 address for {name}"
            return None

        fns.append(ip)
    return fns


def _compile_check(check: Check, where: str) -> CheckFn:
    label = f"CHECK {check.constraint} of {where}"

    def fn(v: Any) -> Problem | None:
        x: Any = v
        if check.length:
            if not isinstance(v, str):
                return None
            x = decimal.Decimal(len(v))
        if check.op == "in":
            return (
                None
                if str(x) in check.value
                else ("check", f"{x!r:.60} violates {label} (one of {', '.join(check.value)})")
            )
        lit = check.value
        if isinstance(lit, decimal.Decimal):
            x = _num(x)
            if x is None:
                return None
        elif not isinstance(x, str):
            return None
        ok = {
            ">=": x >= lit, "<=": x <= lit, ">": x > lit, "<": x < lit, "=": x == lit, "<>": x != lit,
        }[check.op]  # fmt: skip
        return None if ok else ("check", f"{v!r:.60} violates {label} ({check.column} {check.op} {lit})")

    return fn


def _compile_rule(rule: ColumnRule, column: str) -> list[CheckFn]:
    fns: list[CheckFn] = []
    where = f"rule of column {column}"
    if rule.max_length is not None:
        limit = rule.max_length

        def length(v: Any) -> Problem | None:
            if isinstance(v, str | bytes) and len(v) > limit:
                return "max_length", f"is {len(v)} long; the {where} allows at most {limit}"
            return None

        fns.append(length)
    if rule.pattern is not None:
        rx = re.compile(rule.pattern)

        def pattern(v: Any) -> Problem | None:
            if isinstance(v, str) and rx.fullmatch(v) is None:
                return "pattern", f"{v!r:.60} does not match the {where} /{rule.pattern}/"
            return None

        fns.append(pattern)
    if rule.min is not None or rule.max is not None:
        lo = None if rule.min is None else decimal.Decimal(repr(rule.min))
        hi = None if rule.max is None else decimal.Decimal(repr(rule.max))

        def bounds(v: Any) -> Problem | None:
            d = _num(v)
            if d is None:
                return None
            if lo is not None and d < lo:
                return "min", f"{v} is below the {where} minimum {rule.min}"
            if hi is not None and d > hi:
                return "max", f"{v} is above the {where} maximum {rule.max}"
            return None

        fns.append(bounds)
    if rule.allowed is not None:
        allowed = rule.allowed
        texts = frozenset(str(a) for a in allowed)

        def allowed_fn(v: Any) -> Problem | None:
            if v in allowed or (not isinstance(v, bool) and str(v) in texts):
                return None
            return "allowed", f"{v!r:.60} is not one of the {where}: {', '.join(map(str, allowed))}"

        fns.append(allowed_fn)
    return fns


class Validator:
    """Checks events against one destination table (``TargetTable``) and the config's rules."""

    name = "validate"

    def __init__(
        self,
        target: TargetTable,
        rules: Mapping[str, ColumnRule] | None = None,
        *,
        columns: Iterable[str] | None = None,
        quarantine: bool = False,
        quarantined: Iterable[str] = (),
    ) -> None:
        """``columns``: the source columns replicated (others are not checked)."""
        self.rules = dict(rules or {})
        self.columns = None if columns is None else frozenset(columns)
        self.quarantine = quarantine
        self.held: set[str] = set(quarantined)
        self._added: dict[str, float] = {}  # key -> monotonic time it was held (refresh keeps it)
        self.retarget(target)

    def retarget(self, target: TargetTable) -> None:
        """Check against ``target`` from now on (the destination table was altered)."""
        rules = self.rules
        wanted = set(target.columns) if self.columns is None else set(self.columns)
        self.target = target
        self._not_null: set[str] = set()
        self._checks: dict[str, list[CheckFn]] = {}
        for name, col in target.columns.items():
            if name not in wanted:
                continue
            if not col.nullable:
                self._not_null.add(name)
            fns = _compile_target(col, target.where)
            if fns:
                self._checks[name] = fns
        for check in target.checks:
            if check.column in wanted:
                self._checks.setdefault(check.column, []).append(_compile_check(check, target.where))
        self._rule_null: set[str] = set()
        for name, rule in rules.items():
            if rule.not_null:
                self._rule_null.add(name)
            fns = _compile_rule(rule, name)
            if fns:
                self._checks.setdefault(name, []).extend(fns)

    def release(self, key: Mapping[str, Any]) -> None:
        """An operator resolved the held change of this key: later changes flow again."""
        self.held.discard(key_text(key))

    def refresh(self, queued: Iterable[str], now: float, grace: float = 60.0) -> None:
        """Hold exactly the keys that still have entries in the validation queue (``queued``,
        ``key_text`` form), plus those held in the last ``grace`` seconds (their entries may not
        be stored yet). Keys whose entries the operator retried or dropped flow again."""
        self._added = {k: t for k, t in self._added.items() if t > now - grace}
        self.held = set(queued) | set(self._added)

    def problems(self, ev: ChangeEvent) -> list[tuple[str, str, str]]:
        """(column, rule, reason) of every problem of one event."""
        out: list[tuple[str, str, str]] = []
        items: list[tuple[str, Any]] = list(ev.key.items())
        if ev.op not in _DELETES:
            items += list(ev.values.items())
            items += [(c, None) for c in ev.deleted if c not in ev.values]
        for name, v in items:
            if v is None:
                if name in self._not_null:
                    out.append(
                        (name, "not_null", f"column {name} is null; {self.target.where}.{name} is NOT NULL")
                    )
                elif name in self._rule_null:
                    out.append((name, "not_null", f"column {name} is null; its rule says not_null"))
                continue
            fns = self._checks.get(name)
            if fns is None or isinstance(v, dict | list | tuple | set | frozenset):
                continue  # collections and deltas: the destination judges them
            for fn in fns:
                p = fn(v)
                if p is not None:
                    out.append((name, p[0], f"column {name}: {p[1]}"))
        return out

    def process(self, events: Sequence[ChangeEvent]) -> StageResult:
        passed: list[ChangeEvent] = []
        rejected: list[Any] = []
        for ev in events:
            held = None
            if self.quarantine and self.held:
                k = key_text(ev.key)
                if k in self.held:
                    held = k
            found = self.problems(ev)
            if not found and held is None:
                passed.append(ev)
                continue
            if found:
                cols = tuple(dict.fromkeys(c for c, _, _ in found))
                rejected.append(
                    Invalid(event=ev, stage=self.name, reason="; ".join(r for _, _, r in found),
                            columns=cols, rule=found[0][1])
                )  # fmt: skip
            else:
                rejected.append(
                    Invalid(event=ev, stage=self.name, rule="quarantine", columns=tuple(ev.key),
                            reason="an earlier change of this key is in the validation queue (on_invalid = quarantine_key)")
                )  # fmt: skip
            if self.quarantine:
                k = key_text(ev.key)
                self.held.add(k)
                self._added[k] = time.monotonic()
        return StageResult(passed=passed, rejected=rejected)


class DropColumns:
    """Removes the table's ``ignore_columns`` from every event (they have no target column)."""

    name = "ignore_columns"

    def __init__(self, columns: Iterable[str]) -> None:
        self.columns = frozenset(columns)

    def _strip(self, ev: ChangeEvent) -> ChangeEvent:
        cols = self.columns
        if not (cols & ev.values.keys() or cols & ev.deleted or cols & ev.deleted_elements.keys()
                or (ev.preimage and cols & ev.preimage.keys()) or (ev.postimage and cols & ev.postimage.keys())):  # fmt: skip
            return ev
        return msgspec.structs.replace(
            ev,
            values={k: v for k, v in ev.values.items() if k not in cols},
            deleted=ev.deleted - cols,
            deleted_elements={k: v for k, v in ev.deleted_elements.items() if k not in cols},
            preimage=None if ev.preimage is None else {k: v for k, v in ev.preimage.items() if k not in cols},
            postimage=None
            if ev.postimage is None
            else {k: v for k, v in ev.postimage.items() if k not in cols},
        )

    def process(self, events: Sequence[ChangeEvent]) -> StageResult:
        return StageResult(passed=[self._strip(e) for e in events], rejected=[])

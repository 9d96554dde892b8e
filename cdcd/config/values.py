"""Value types of ``cdcd.toml``: durations, secrets, validated names, and the msgspec hook
that decodes them. ``dec_hook`` errors become the "expected ..., got ..." text of ``ConfigError``."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, ClassVar, Literal

import msgspec

__all__ = [
    "PATTERN_NAMES",
    "Consistency",
    "Duration",
    "Identifier",
    "PosInt",
    "Secret",
    "SourceTable",
    "TargetTable",
    "dec_hook",
    "join_key",
    "show_value",
    "unwrap",
]


# ------------------------------------------------------------------------------------ value types
class Duration(float):
    """Seconds, written in the file as ``"250ms"``, ``"2s"``, ``"1m30s"``, ``"24h"``, ``"7d"``."""

    _PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
    _UNITS: ClassVar[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

    @classmethod
    def parse(cls, text: str) -> Duration:
        """``"1m30s"`` -> ``Duration(90.0)``; raises ValueError with the accepted forms."""
        s = text.strip()
        if s == "0":
            return cls(0.0)
        pos, total = 0, 0.0
        while pos < len(s):
            m = cls._PART.match(s, pos)
            if m is None:
                break
            total += float(m.group(1)) * cls._UNITS[m.group(2)]
            pos = m.end()
        if not s or pos != len(s):
            raise ValueError(f'expected a duration such as "250ms", "2s", "1m30s", "24h", got "{text}"')
        return cls(total)

    def __str__(self) -> str:
        ms = round(float(self) * 1000)
        for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms and ms % size == 0:
                return f"{ms // size}{unit}"
        return f"{ms}ms"

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"


class Secret:
    """A secret string (password, token, DSN). ``repr``/``str`` never show it; ``get()`` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


_SOURCE_TABLE = r"^[A-Za-z0-9_]{1,48}\.[A-Za-z0-9_]{1,48}$"
_TARGET_TABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}\.[A-Za-z_][A-Za-z0-9_]{0,62}$"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"

# "keyspace.table" of a CDC-enabled Scylla table (CQL names: letters, digits, _).
SourceTable = Annotated[str, msgspec.Meta(pattern=_SOURCE_TABLE)]
# "schema.table" in a destination: letters, digits, _, not starting with a digit, at most 63 each
# (PostgreSQL's limit, the strictest of the three destinations).
TargetTable = Annotated[str, msgspec.Meta(pattern=_TARGET_TABLE)]
# One column or table name in a destination (the rule of each part of TargetTable).
Identifier = Annotated[str, msgspec.Meta(pattern=_IDENTIFIER)]

# What each pattern means, for error messages (msgspec only says "matching regex ...").
PATTERN_NAMES = {
    _SOURCE_TABLE: '"keyspace.table" (letters, digits, _; at most 48 each)',
    _TARGET_TABLE: '"schema.table" (letters, digits, _; not starting with a digit)',
    _IDENTIFIER: "an identifier (letters, digits, _; not starting with a digit)",
}

PosInt = Annotated[int, msgspec.Meta(ge=1)]
Consistency = Literal[
    "ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE",
]  # fmt: skip


def dec_hook(tp: Any, obj: Any) -> Any:
    if tp is Duration:
        if isinstance(obj, str):
            return Duration.parse(obj)
        raise TypeError(f'expected a duration string such as "2s" or "250ms", got {show_value(obj)}')
    if tp is Secret:
        if isinstance(obj, str):
            return Secret(obj)
        raise TypeError("expected a string")
    raise NotImplementedError(f"no decoder for {tp!r}")


def show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 80 else f'"{value[:77]}..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, dict):
        return "a table" if value else "an empty table"
    return type(value).__name__


def join_key(path: str, key: str) -> str:
    part = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'
    return f"{path}.{part}" if path else part


def unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return unwrap(members[0])
    return tp

"""Columns of user-created PostgreSQL tables whose type differs from cdcd's own (docs/type-map.md,
"Existing tables and type overrides").

``conversion(cql, got)`` says whether a column of type ``got`` (``format_type`` spelling) can hold
values of CQL type ``cql`` and how they are converted; None when it cannot (``ensure_table``
then refuses to start, naming the column and both types). Conversions are exact or refused per
value: the validator (``cdcd.stages.validate``) refuses values that would be cut, rounded or do
not parse before the write, and PostgreSQL refuses the rest (SQLSTATE 22, to the validation
queue). The table (CQL -> accepted PostgreSQL types):

=====================================  =================================================  ============
CQL                                    PostgreSQL column types accepted                   conversion
=====================================  =================================================  ============
ascii, text, varchar                   text, varchar(n), char(n)                          none
ascii, text, varchar                   json, jsonb (the text holds JSON)                  parsed
ascii, text, varchar                   timestamptz, timestamp (ISO-8601 text), date       parsed
ascii, text, varchar                   uuid, inet                                         parsed
tinyint, smallint, int, bigint,        smallint, integer, bigint, numeric(p,s)            none / Decimal
varint
decimal                                numeric(p,s)                                       none
double                                 real                                               none
float                                  double precision                                   none
timestamp                              timestamp (without time zone, UTC)                 zone dropped
timeuuid                               uuid                                               none
=====================================  =================================================  ============
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import re
import uuid
from typing import Any

from cdcd.schema import CqlType
from cdcd.sinks.postgres.types import JSON_DECODER, Converter, identity

__all__ = ["TYPE_PATTERN", "check_type_text", "conversion"]

_TEXT = ("ascii", "text", "varchar")
_INTS = ("tinyint", "smallint", "int", "bigint", "varint")
# A column type as the config may spell it (column type overrides): names, (p[,s]), [].
TYPE_PATTERN = re.compile(
    r"[A-Za-z][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?( with(out)? time zone)?(\[\])?"
)


def check_type_text(text: str) -> str:
    """A PostgreSQL column type from the config; ValueError unless it is a plain type name."""
    if not TYPE_PATTERN.fullmatch(text.strip()):
        raise ValueError(f"{text!r} is not a PostgreSQL type name such as numeric(12,2) or varchar(50)")
    return text.strip()


def _base(got: str) -> str:
    return re.sub(r"\(.*\)", "", got).strip()


def _jsonb(v: Any) -> Any:
    if v is None:
        return None
    return JSON_DECODER.decode(v) if isinstance(v, str) else v


def _ts(v: Any) -> Any:
    if v is None or not isinstance(v, str):
        return v
    t = dt.datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _ts_naive(v: Any) -> Any:
    t = _ts(v)
    if isinstance(t, dt.datetime) and t.tzinfo is not None:
        return t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


def _date(v: Any) -> Any:
    return dt.date.fromisoformat(v) if isinstance(v, str) else v


def _uuid(v: Any) -> Any:
    return uuid.UUID(v) if isinstance(v, str) else v


def _inet(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    return ipaddress.ip_interface(v) if "/" in v else ipaddress.ip_address(v)


def _dec(v: Any) -> Any:
    return decimal.Decimal(v) if isinstance(v, int) and not isinstance(v, bool) else v


def conversion(t: CqlType, got: str) -> Converter | None:
    """How a canonical value of ``t`` (after cdcd's own ``to_pg``) becomes a value of the column
    type ``got``; ``identity`` when asyncpg encodes it as it is, None when ``got`` cannot hold
    ``t``."""
    base = _base(got)
    name = t.name
    if name in _TEXT:
        if base in ("text", "character varying", "character"):
            return identity
        if base == "jsonb":
            return _jsonb
        if base == "json":
            return identity
        if base == "timestamp with time zone":
            return _ts
        if base == "timestamp without time zone":
            return _ts_naive
        if base == "date":
            return _date
        if base == "uuid":
            return _uuid
        if base == "inet":
            return _inet
        return None
    if name in _INTS:
        if base in ("smallint", "integer", "bigint"):
            return identity
        if base == "numeric":
            return _dec
        return None
    if name == "decimal":
        return identity if base == "numeric" else None
    if name in ("double", "float"):
        return identity if base in ("real", "double precision") else None
    if name == "timestamp":
        return _ts_naive if base == "timestamp without time zone" else None
    if name in ("timeuuid", "uuid"):
        return identity if base == "uuid" else None
    return None

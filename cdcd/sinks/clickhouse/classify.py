"""Exception -> action for the ClickHouse sink (style.md §7.5; the PostgreSQL table is
cdcd/sinks/classify.py).

=============================================  ===============================================
what failed                                    action
=============================================  ===============================================
network (clickhouse-connect OperationalError,  ``RETRY``: destination unavailable
aiohttp/OSError), timeouts, HTTP 5xx without
a ClickHouse code, overload/timeout codes
bad data: server codes 6, 27, 38, 41, 53, 69,  ``BAD_DATA``: bisect, dead-letter the culprits
70, 72, 117, 131, 321, 349, 469; client-
side serialisation errors (DataError, ValueError,
TypeError, ArithmeticError, struct.error)
anything else (syntax, unknown table, bugs)    ``FATAL``: surfaces; the group stops loudly
=============================================  ===============================================
"""

from __future__ import annotations

import asyncio
import re
import struct

from clickhouse_connect.driver import exceptions as ch_exc

from cdcd.sinks.classify import Action

__all__ = ["Action", "classify", "error_code"]

# TIMEOUT_EXCEEDED, SOCKET_TIMEOUT, NETWORK_ERROR, TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION,
# MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, TOO_MANY_PARTS, UNKNOWN_STATUS_OF_INSERT, ABORTED,
# QUERY_WAS_CANCELLED, ALL_CONNECTION_TRIES_FAILED, KEEPER_EXCEPTION, SERVER_OVERLOADED, ...
_RETRY_CODES = frozenset({159, 164, 202, 203, 209, 210, 236, 241, 242, 252, 279, 319, 394, 425, 999, 1000})
# CANNOT_PARSE_TEXT, CANNOT_PARSE_INPUT_ASSERTION_FAILED, CANNOT_PARSE_DATE, CANNOT_PARSE_DATETIME,
# TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, CANNOT_CONVERT_TYPE, CANNOT_PARSE_NUMBER, INCORRECT_DATA,
# TOO_LARGE_STRING_SIZE, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN,
# VIOLATED_CONSTRAINT
_BAD_CODES = frozenset({6, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 349, 469})
_CODE = re.compile(r"[Cc]ode:\s*(\d+)")
_HTTP_5XX = re.compile(r"HTTP status 5\d\d")


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of a server error, if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE.search(str(exc))
    return int(m.group(1)) if m else None


def classify(exc: BaseException) -> Action:
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, ch_exc.OperationalError | OSError | TimeoutError):
        return Action.RETRY
    if isinstance(
        exc,
        ch_exc.DataError | ValueError | TypeError | ArithmeticError | struct.error | AttributeError,
    ):  # ArithmeticError: OverflowError, decimal.InvalidOperation (a null into a Decimal column)
        return Action.BAD_DATA
    if isinstance(exc, ch_exc.DatabaseError):
        code = error_code(exc)
        if code in _BAD_CODES:
            return Action.BAD_DATA
        if code in _RETRY_CODES:
            return Action.RETRY
        if code is None and _HTTP_5XX.search(str(exc)):
            return Action.RETRY
        return Action.FATAL
    if type(exc).__module__.startswith("aiohttp"):
        return Action.RETRY  # aiohttp.ClientError and friends
    return Action.FATAL

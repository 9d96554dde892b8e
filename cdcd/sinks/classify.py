"""Exception -> action for the PostgreSQL family of sinks (style.md §6 asyncpg table, §7.5).

=====================================  =======================================================
what failed                            action
=====================================  =======================================================
SQLSTATE class 08, 53, 57; 40001/40P01  ``RETRY``: destination unavailable / transaction aborted
connection errors, OSError, timeouts   ``RETRY`` (a timeout is never a permanent failure)
SQLSTATE class 22 (data), 23 (integrity) ``BAD_DATA``: bisect the batch, dead-letter the culprits
asyncpg client-side encoding errors    ``BAD_DATA`` (a value the column type cannot encode)
anything else (42xxx, bugs)            ``FATAL``: surfaces; the pipeline stops the group loudly
=====================================  =======================================================
"""

from __future__ import annotations

import asyncio
import enum

import asyncpg

__all__ = ["Action", "classify", "connection_broken"]


class Action(enum.Enum):
    RETRY = "retry"
    BAD_DATA = "bad_data"
    FATAL = "fatal"


_RETRY_CLASSES = ("08", "53", "57")
_RETRY_STATES = ("40001", "40P01", "55P03")
_BAD_CLASSES = ("22", "23")


def classify(exc: BaseException) -> Action:
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state in _RETRY_STATES or state[:2] in _RETRY_CLASSES:
            return Action.RETRY
        if state[:2] in _BAD_CLASSES:
            return Action.BAD_DATA
        return Action.FATAL
    if isinstance(exc, asyncpg.DataError | ValueError | TypeError | OverflowError):
        return Action.BAD_DATA
    if isinstance(
        exc,
        asyncpg.InterfaceError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InternalClientError  # e.g. a connection the server closed under us
        | OSError
        | TimeoutError,
    ):
        return Action.RETRY
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    return Action.FATAL


def connection_broken(exc: BaseException) -> bool:
    """True when the connection that raised ``exc`` must not be reused: anything but a proper
    server answer, or a server answer saying the session is over (08xxx, 57P0x)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(("08", "57P"))
    return classify(exc) is Action.RETRY

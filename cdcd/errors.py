"""Exception tree of cdcd. Every class says whether retrying can help (``retriable``).

::

    CdcdError
    ├── ConfigError          file, key path, expected, got; fatal at start-up
    │   └── ConfigErrors     several ConfigErrors found in one pass (``errors``)
    ├── SourceUnavailable    retriable: driver errors, timeouts, Scylla down
    ├── DependencyUnavailable retriable: Redis (or another dependency) cannot be reached
    ├── SinkError
    │   ├── SinkUnavailable  retriable: connection lost, timeout, SQLSTATE 08/53/57, ClickHouse network
    │   └── BadRows          {index: reason}; deterministic (default: data the destination refuses, e.g.
    │                        SQLSTATE 22/23): to the validation queue at once; else retried, then DLQ
    ├── InvalidRecord        never retried; to the validation queue with original data and reason
    ├── SchemaMismatch       the destination cannot hold the source schema (refused at start-up)
    └── LeaseLost            the stream group's lease was taken over; stop without committing
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence

__all__ = [
    "BadRows",
    "CdcdError",
    "ConfigError",
    "ConfigErrors",
    "DependencyUnavailable",
    "InvalidRecord",
    "LeaseLost",
    "SchemaMismatch",
    "SinkError",
    "SinkUnavailable",
    "SourceUnavailable",
    "describe",
    "reason",
]


class CdcdError(Exception):
    """Base of every error cdcd raises on purpose."""

    retriable: bool = False


class ConfigError(CdcdError):
    """A configuration problem, located precisely: which file, which key, what was expected."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.key = key
        self.detail = message
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigErrors(ConfigError):
    """Every problem found in one pass over a configuration file (``errors``, in file order as
    far as known). ``file``/``key``/``detail`` are those of the first; ``str()`` has one line per
    error, each ``file: key: message``."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        self.errors = list(errors)
        first = self.errors[0]
        CdcdError.__init__(self, "\n".join(str(e) for e in self.errors))
        self.file, self.key, self.detail = first.file, first.key, first.detail


class SourceUnavailable(CdcdError):
    """Scylla could not be read right now (connection, timeout, unavailable replicas)."""

    retriable = True


class DependencyUnavailable(CdcdError):
    """A dependency (Redis) cannot be reached right now; the message names it, where it is and
    the server's or the network's own words."""

    retriable = True


class SinkError(CdcdError):
    """A destination refused or failed a write."""


class SinkUnavailable(SinkError):
    """The destination is unreachable or overloaded; the whole batch may be retried unchanged."""

    retriable = True


class BadRows(SinkError):
    """Some rows of a batch can never be written; ``errors`` maps batch index -> reason.

    ``deterministic`` (the default): the destination refused the data itself (PostgreSQL
    SQLSTATE classes 22/23, ClickHouse type/parse/constraint errors, a value the sink cannot
    encode): writing it again can never succeed, so those rows go to the validation queue at
    once, never on a backoff schedule. False: the rows may pass later; they are retried up to
    ``max_attempts`` and then go to the dead-letter queue."""

    def __init__(self, errors: Mapping[int, str], *, deterministic: bool = True) -> None:
        self.errors = dict(errors)
        self.deterministic = deterministic
        first = next(iter(self.errors.items()), (None, ""))
        super().__init__(f"{len(self.errors)} bad row(s); first at index {first[0]}: {first[1]}")


class InvalidRecord(CdcdError):
    """A record failed validation; it is routed to the validation queue, never retried."""


class SchemaMismatch(CdcdError):
    """The configured destination cannot represent the source table (e.g. a bad upsert key)."""


class LeaseLost(CdcdError):
    """Another replica holds the stream group now; stop reading and do not save checkpoints."""


def describe(exc: BaseException) -> str:
    """An error as operators read it: cdcd's own errors by their message (it names what failed
    and where), any other as ``Type: message`` (the type alone when there is no message)."""
    text = str(exc).strip()
    if isinstance(exc, CdcdError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def reason(exc: BaseException) -> str:
    """What a driver or the network said, for "cannot connect to X at host:port: <reason>":
    a server's message as it is (``password authentication failed for user "x"``, with its hint
    when it gives one), a socket error with the system's words for it (``Connection refused:
    Connect call failed ('127.0.0.1', 5432)``), anything else as ``describe`` has it."""
    if isinstance(exc, CdcdError):
        return describe(exc)
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
        system = os.strerror(exc.errno)
        said = (exc.strerror or "").strip()
        return f"{system}: {said}" if said and said != system else system
    if isinstance(exc, TimeoutError) and not str(exc).strip():
        return "timed out"
    text = str(exc).strip()
    if type(exc).__module__.split(".")[0] in _DRIVERS and text:
        hint = getattr(exc, "hint", None)
        if hint:
            text = f"{text} (hint: {hint})"
        system = _system_words(exc)
        return f"{text} ({system})" if system and system.lower() not in text.lower() else text
    return describe(exc)


def _system_words(exc: BaseException) -> str:
    """The system's words (``Connection refused``) for a socket error behind a driver's error."""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and not isinstance(cause, socket.gaierror) and (cause.errno or 0) > 0:
            return os.strerror(cause.errno or 0)
        cause = cause.__cause__ or cause.__context__
    return ""


# Packages whose exception messages are the server's or the driver's own words.
_DRIVERS = frozenset({"asyncpg", "clickhouse_connect", "redis", "cassandra", "aiohttp"})

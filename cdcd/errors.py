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
import re
import socket
import ssl
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
    "client_certificate_hint",
    "describe",
    "reason",
    "tls_reason",
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


class UnmanagedTable(SchemaMismatch):
    """A source column has no column in a destination table cdcd did not create: cdcd never adds
    columns to a user's table (the schema gate then leaves the column out)."""


MANAGED_COMMENT = "managed by cdcd"  # table comment of the destination tables cdcd created


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
    if tls := tls_reason(exc):
        return tls
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


# What TLS libraries say (OpenSSL's reason codes and alert names, asyncpg's and the drivers' own
# words), in the order they are tried, and what it means to an operator.
_TLS_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I), meaning)
    for pattern, meaning in (
        (r"mismatch|doesn't match|does not match|not valid for",
         "TLS: the server's certificate does not match the host name cdcd connects to"),
        (r"certificate has expired", "TLS: the server's certificate has expired"),
        (r"unable to get (local )?issuer|self[- ]signed|unknown ca|certificate verify failed",
         "TLS: the server's certificate is not signed by a CA cdcd trusts (check ca_file)"),
        (r"certificate required|peer did not return a certificate|alert handshake failure",
         "TLS: the server requires a client certificate that it accepts (check cert_file and key_file)"),
        (r"bad certificate|unsupported certificate",
         "TLS: the server refused cdcd's client certificate (check cert_file and key_file)"),
        (r"rejected ssl upgrade|wrong version number|record layer failure|packet length too long|"
         r"unexpected eof while reading|http request",
         "TLS: the server did not answer with TLS; is TLS on at this port?"),
    )
)  # fmt: skip


def tls_reason(exc: BaseException) -> str:
    """``"TLS: <what it means> (<what the library said>)"`` when ``exc`` or one of its causes is a
    TLS failure, else ``""``. The meaning is decided on TLS errors only (``ssl.SSLError``, or a
    message naming SSL/TLS), so a plain "connection refused" is never called a TLS problem."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        text = str(cur)
        if isinstance(cur, ssl.SSLError) or re.search(r"\bssl\b|\btls|certificate", text, re.I):
            for pattern, meaning in _TLS_REASONS:
                if pattern.search(text):
                    said = _SSL_BRACKETS.search(text)
                    return f"{meaning} ({said.group(0) if said else text.strip()[:300]})"
        todo.extend(c for c in (cur.__cause__, cur.__context__) if c is not None)
        errors = getattr(cur, "errors", None)  # cassandra's NoHostAvailable: {host: error}
        if isinstance(errors, dict):
            todo.extend(e for e in errors.values() if isinstance(e, BaseException))
    return ""


_CLOSED = re.compile(r"reset by peer|broken pipe|closed by (the )?server|connection (was )?closed|eof", re.I)


def client_certificate_hint(said: str, section: str) -> str:
    """`` (...)`` to add to a failed TLS connection's reason when the server dropped it during or
    just after the handshake and cdcd sent no client certificate: with TLS 1.3 a server that
    requires one says so only by closing the connection."""
    if _CLOSED.search(said) and not said.startswith("TLS:"):
        return (
            " (the server closed the TLS connection; if it requires a client certificate, "
            f"set {section}.cert_file and {section}.key_file)"
        )
    return ""


_SSL_BRACKETS = re.compile(r"\[SSL[^\]]*\][^()\n]*(\(_ssl\.c:\d+\))?")


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

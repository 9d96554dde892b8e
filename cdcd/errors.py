"""Exception tree of cdcd. Every class says whether retrying can help (``retriable``).

::

    CdcdError
    ├── ConfigError          file, key path, expected, got; fatal at start-up
    │   └── ConfigErrors     several ConfigErrors found in one pass (``errors``)
    ├── SourceUnavailable    retriable: driver errors, timeouts, Scylla down
    ├── SinkError
    │   ├── SinkUnavailable  retriable: connection lost, timeout, SQLSTATE 08/53/57, ClickHouse network
    │   └── BadRows          {index: reason}; those rows go to the dead-letter store, the rest are retried
    ├── InvalidRecord        never retried; to the validation queue with original data and reason
    ├── SchemaMismatch       the destination cannot hold the source schema (refused at start-up)
    └── LeaseLost            the stream group's lease was taken over; stop without committing
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "BadRows",
    "CdcdError",
    "ConfigError",
    "ConfigErrors",
    "InvalidRecord",
    "LeaseLost",
    "SchemaMismatch",
    "SinkError",
    "SinkUnavailable",
    "SourceUnavailable",
    "describe",
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


class SinkError(CdcdError):
    """A destination refused or failed a write."""


class SinkUnavailable(SinkError):
    """The destination is unreachable or overloaded; the whole batch may be retried unchanged."""

    retriable = True


class BadRows(SinkError):
    """Some rows of a batch can never be written; ``errors`` maps batch index -> reason."""

    def __init__(self, errors: Mapping[int, str]) -> None:
        self.errors = dict(errors)
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

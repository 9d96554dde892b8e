"""Structured logs (R-60): one JSON object per line on stderr, through structlog.

Every line has ``timestamp`` (ISO 8601, UTC), ``level``, ``component`` (the logger name, e.g.
``cdcd.flow.pipeline``), ``message`` (a fixed string, never an f-string) and the fields passed with
it: ``table``, ``destination``, ``group``, ``first_event``/``last_event``/``events`` (the
correlation ids of a batch, bound with ``correlation()``), ``error``... Standard-library loggers (the READER's ``logging.getLogger``,
the Scylla driver) go through the same renderer, so the output is uniform.

The Scylla driver logs connection failures (every reconnect attempt) with a full traceback;
``DriverErrorFolder`` turns each into one line: the driver's message plus an ``error`` field
(``ConnectionRefusedError: ...``), no ``exception``.

Sensitive values are never logged (``Redactor``): row values, images and event payloads are
dropped, secrets are masked by key name (password, token, dsn...), ``Secret`` values render as
``***``, and passwords inside URLs in any string (``postgresql://u:pw@h`` in a driver error)
become ``u:***@``. It runs last before rendering, on every line.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from cdcd.config import Secret

__all__ = [
    "DriverErrorFolder",
    "Redactor",
    "configure",
    "correlation",
    "get_logger",
    "scrub",
]

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_SECRET_ARG = re.compile(r"(?i)\b(password|passwd|pwd|token|secret)=([^\s&;,]+)")


def scrub(text: str) -> str:
    """``text`` with URL passwords and ``password=...`` style arguments masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_ARG.sub(lambda m: f"{m.group(1)}=***", text)


class Redactor:
    """structlog processor: drop payloads, mask secrets. Cheap: one dict pass per line."""

    DROP = frozenset({"values", "row", "preimage", "postimage", "deleted_elements", "event_data", "payload"})
    MASK = frozenset(
        {
            "password", "passwd", "secret", "token", "admin_token", "authorization", "dsn",
            "redis_url", "api_key", "credentials", "cookie",
        }
    )  # fmt: skip

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        for key in list(event):
            value = event[key]
            low = key.lower()
            if low in self.DROP:
                del event[key]
            elif low in self.MASK or isinstance(value, Secret):
                event[key] = "***"
            elif isinstance(value, str):
                if "://" in value or "=" in value:
                    event[key] = scrub(value)
            elif type(value).__name__ == "ChangeEvent":
                event[key] = _describe_event(value)
            elif isinstance(value, BaseException):
                event[key] = scrub(f"{type(value).__name__}: {value}")
        return event


def _describe_event(ev: Any) -> str:
    return f"{ev.table} op={ev.op.name} time={ev.pos.time}"


class DriverErrorFolder(logging.Filter):
    """For records of the ``cassandra`` driver: the exception (and any stack) becomes the short
    ``error`` field (``Type: message``) instead of a traceback. The driver logs every failed
    (re)connection this way; its traceback says nothing an operator can act on."""

    PREFIX = "cassandra"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.PREFIX and not record.name.startswith(self.PREFIX + "."):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            text = str(exc).strip()
            record.cdcd_error = scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def _driver_error(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """The ``error`` field ``DriverErrorFolder`` put on a standard-library record."""
    record = event.get("_record")
    error = getattr(record, "cdcd_error", None)
    if error is not None:
        event["error"] = error
        message = event.get("event")
        if isinstance(message, str):
            event["event"] = message.rstrip(": ")  # "Error connecting to h:9042:" + the error
    return event


def _rename_logger(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    name = event.pop("logger", None)
    if name is not None and "component" not in event:
        event["component"] = name
    return event


def _scrub_exception(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    exc = event.get("exception")
    if isinstance(exc, str):
        event["exception"] = scrub(exc)
    return event


_FIRST = ("timestamp", "level", "component", "message")


def _order(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """timestamp, level, component and message first: easier to read, same JSON."""
    ordered = {k: event[k] for k in _FIRST if k in event}
    ordered.update((k, v) for k, v in event.items() if k not in ordered)
    return ordered


def configure(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Route structlog and the standard ``logging`` module to one handler on ``stream``
    (stderr). Safe to call again (tests, reconfiguration): it replaces cdcd's handler."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.stdlib.PositionalArgumentsFormatter(),
        _rename_logger,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=repr)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _driver_error],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub_exception,
            Redactor(),
            structlog.processors.EventRenamer("message"),
            _order,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("cdcd")
    handler.addFilter(DriverErrorFolder())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "cdcd"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The driver is chatty at INFO (every connection); keep its warnings.
    logging.getLogger("cassandra").setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(component: str) -> structlog.stdlib.BoundLogger:
    """A logger whose lines carry ``component`` (use the module's ``__name__``)."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component)
    return logger


@contextlib.contextmanager
def correlation(events: Sequence[Any] = (), **fields: Any) -> Iterator[None]:
    """Bind the correlation fields of ``events`` (``first_event``, ``last_event``, ``events``:
    ids derived from their CDC positions, ``cdcd.ops.correlation``) and ``fields`` to every log
    line in this context (contextvars: per asyncio task)."""
    from cdcd.ops.correlation import batch_fields

    with structlog.contextvars.bound_contextvars(**batch_fields(events), **fields):
        yield

"""Correlation ids of change events, derived from their CDC position, so that the same change
has the same id on every replica, in every destination and after a replay:

    ``<stream id hex>:<cdc$time>:<cdc$batch_seq_no>``

(the stream, the log group's timeuuid and the first log row of the event within the group; a
group holds several events only for batches, told apart by the sequence number). Log lines about
one event carry ``event`` (its id) and ``key`` (its primary key; classified key columns are
already masked when it is logged, masking runs before any destination sees the event); lines
about a batch carry ``first_event``, ``last_event`` and ``events`` (the count) — ``batch_fields``.
Find every line about a change with ``grep <id>``; its spans carry the same attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdcd.events import ChangeEvent

__all__ = ["batch_fields", "event_fields", "event_id"]


def event_id(ev: ChangeEvent) -> str:
    return f"{ev.pos.stream_id.hex()}:{ev.pos.time}:{ev.batch_seq}"


def event_fields(ev: ChangeEvent) -> dict[str, Any]:
    """``event`` and ``key`` of one event, for a log line."""
    return {"event": event_id(ev), "key": {k: _plain(v) for k, v in ev.key.items()}}


def batch_fields(events: Sequence[ChangeEvent]) -> dict[str, Any]:
    """``first_event``, ``last_event`` and ``events`` of a batch (empty for no events)."""
    if not events:
        return {}
    return {"first_event": event_id(events[0]), "last_event": event_id(events[-1]), "events": len(events)}


def _plain(v: Any) -> Any:
    """Key values as JSON-friendly text (uuids, dates, bytes...)."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)

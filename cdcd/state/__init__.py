"""Durable state of cdcd on Redis.

* ``checkpoints``: ``CheckpointStore``: last applied position per (destination, table,
  generation, stream), saved atomically per stream group, fence hook for leases; "generation
  done" markers.
* ``deadletter``: ``DeadLetterStore``: dead-letter store, validation queue and staleness audit,
  each entry holding the original ``ChangeEvent``.
* ``common``: ``StateUnavailable`` (retriable: Redis down or refusing writes) and ``StateError``.
* ``codec``: lossless msgpack of event values (Decimal, UUID, date, tuple, varint, ...).
"""

from __future__ import annotations

from cdcd.state.checkpoints import CheckpointStore, Fence, GroupRef
from cdcd.state.common import StateError, StateUnavailable
from cdcd.state.deadletter import KINDS, DeadLetter, DeadLetterStore, Kind, entry_id

__all__ = [
    "KINDS",
    "CheckpointStore",
    "DeadLetter",
    "DeadLetterStore",
    "Fence",
    "GroupRef",
    "Kind",
    "StateError",
    "StateUnavailable",
    "entry_id",
]

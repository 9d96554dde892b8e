"""cdcd's Scylla CDC source.

* ``session``: ``ScyllaSession`` (driver Cluster/Session bridged into asyncio, errors ->
  ``SourceUnavailable``).
* ``generations``: ``StreamDiscovery`` finds generations (vnodes) / stream sets (tablets) and
  yields ``StreamGroup`` values; ``start_floor_ms`` turns "now"/"earliest"/a time into ms.
* ``reader``: ``GroupReader(session, discovery, group).read(start)`` -> ``EventBatch`` stream.
* ``decode`` / ``values``: pure CDC-log-group -> ``ChangeEvent`` decoding.
"""

from __future__ import annotations

from cdcd.scylla.decode import LogDecoder, UndecodableGroup
from cdcd.scylla.generations import StreamDiscovery, StreamGroup, start_floor_ms
from cdcd.scylla.reader import GroupReader, ReaderConfig
from cdcd.scylla.session import ScyllaSession

__all__ = [
    "GroupReader",
    "LogDecoder",
    "ReaderConfig",
    "ScyllaSession",
    "StreamDiscovery",
    "StreamGroup",
    "UndecodableGroup",
    "start_floor_ms",
]

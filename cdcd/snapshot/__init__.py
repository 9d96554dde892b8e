"""Initial snapshot and reconciliation (R-06, R-44).

* ``source``: token ranges, paged scans with ``writetime()``, source rows -> change events.
* ``path``: the per-destination write path (common stages, destination stages, dead-letter
  store, ``SinkWriter``, ``Sink.write``) shared with streamed changes.
* ``store``: snapshot progress per (destination, table) in Redis (resumable, finished = recorded).
* ``run``: ``snapshot_table`` (parallel ranges, progress for the CLI bar, ``/status``, metrics).
* ``reconcile``: per-range counts and checksums, row diffs, re-checks, repair.
* ``bar``: the CLI progress line; ``commands``: the two CLI commands.
"""

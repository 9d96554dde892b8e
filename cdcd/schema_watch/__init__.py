"""Schema changes of the source tables while cdcd runs (R-30, R-31, R-32; issue 12).

* ``diff``: two ``TableSchema`` versions -> change kinds; the schema a destination moves to.
* ``store``: versions, history, the shared cache and halts in Redis.
* ``watcher``: detection (driver metadata every second, the server every
  ``source.schema_check_interval``), logging, the ``cdcd_schema_changes_total`` counter, halts.
* ``gate``: a table's ``schema_changes`` policy (propagate / log / halt) for one destination,
  applied before each write of a branch.
"""

from cdcd.schema_watch.diff import Change, diff, fits
from cdcd.schema_watch.gate import SchemaGate
from cdcd.schema_watch.store import SchemaStore
from cdcd.schema_watch.watcher import SchemaWatcher

__all__ = ["Change", "SchemaGate", "SchemaStore", "SchemaWatcher", "diff", "fits"]

"""cdcd: replicate ScyllaDB CDC log tables into PostgreSQL, ClickHouse and TimescaleDB.

The public surface is the ``cdcd`` command line and ``cdcd.toml``; modules are internal.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

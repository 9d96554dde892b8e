"""What cdcd's PostgreSQL/TimescaleDB role lacks, as the ``GRANT`` statements to run
(``cdcd check-config``; docs/permissions.md lists the same grants).

cdcd needs, in the destination database:

* ``CONNECT`` and ``TEMPORARY`` on the database (each write stages rows in a ``TEMP`` table);
* with ``create_tables = true``: ``CREATE`` on the database (cdcd runs ``CREATE SCHEMA IF NOT
  EXISTS``, which PostgreSQL checks before it looks whether the schema exists) and, on a schema
  that already exists, ``USAGE`` and ``CREATE`` on it (``CREATE TABLE IF NOT EXISTS`` is checked
  the same way); the tables cdcd creates are its own;
* on every target table that already exists (the table, ``<table>_static``, ``<table>_history``):
  ``SELECT, INSERT, UPDATE, DELETE`` and ``USAGE`` on its schema.

The privileges are read with ``has_database_privilege``/``has_schema_privilege``/
``has_table_privilege`` for the connected role, so grants through roles it belongs to count.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from cdcd.sinks import TableMapping
from cdcd.sinks.postgres.sql import ident, qualified

__all__ = ["missing_grants"]

_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")


async def missing_grants(conn: asyncpg.Connection, mappings: Iterable[TableMapping]) -> list[str]:
    """The statements (without ``;``) that give the connected role what it lacks, in order."""
    role, database = await conn.fetchrow("SELECT current_user, current_database()")
    to = ident(role)
    db = ident(database)
    out: list[str] = []
    mappings = list(mappings)

    def add(statement: str) -> None:
        if statement not in out:
            out.append(statement)

    db_needs = ["CONNECT", "TEMPORARY"]
    if any(m.create for m in mappings):
        db_needs.append("CREATE")
    lacking = [
        p for p in db_needs if not await conn.fetchval("SELECT has_database_privilege($1, $2)", database, p)
    ]
    if lacking:
        add(f"GRANT {', '.join(lacking)} ON DATABASE {db} TO {to}")
    for m in mappings:
        schema_exists = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", m.target_schema
        )
        if not schema_exists:
            if not m.create:
                add(
                    f"CREATE SCHEMA {ident(m.target_schema)}  -- then create the tables (create_tables = false)"
                )
            continue
        schema_needs = ["USAGE", "CREATE"] if m.create else ["USAGE"]
        lacking = [
            p
            for p in schema_needs
            if not await conn.fetchval("SELECT has_schema_privilege($1, $2)", m.target_schema, p)
        ]
        if lacking:
            add(f"GRANT {', '.join(lacking)} ON SCHEMA {ident(m.target_schema)} TO {to}")
        names = [m.target_table, f"{m.target_table}_static", f"{m.target_table}_history"]
        existing = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p') ORDER BY 1",
            m.target_schema,
            names,
        )
        for row in existing:
            name = qualified(m.target_schema, row["relname"])
            lacking = [
                p
                for p in _TABLE_PRIVILEGES
                if not await conn.fetchval("SELECT has_table_privilege($1, $2)", name, p)
            ]
            if lacking:
                add(f"GRANT {', '.join(lacking)} ON {name} TO {to}")
    return out

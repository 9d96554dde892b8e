"""What cdcd's PostgreSQL/TimescaleDB role lacks, as the ``GRANT`` statements to run
(``cdcd check-config``; docs/permissions.md lists the same grants).

cdcd needs, in the destination database:

* ``CONNECT`` and ``TEMPORARY`` on the database (each write stages rows in a ``TEMP`` table);
* with ``create_tables = true``: ``CREATE`` on the database (cdcd runs ``CREATE SCHEMA IF NOT
  EXISTS``, which PostgreSQL checks before it looks whether the schema exists) and, on a schema
  that already exists, ``USAGE`` and ``CREATE`` on it (``CREATE TABLE IF NOT EXISTS`` is checked
  the same way); the tables cdcd creates are its own;
* on every target table that already exists (the table, ``<table>_static``, ``<table>_history``):
  ``SELECT, INSERT, UPDATE, DELETE`` and ``USAGE`` on its schema; on the offsets table
  (``cdcd.sinks.offsets``, in its own schema when ``offsets_schema`` says so) ``SELECT, INSERT,
  UPDATE``.

The privileges are read with ``has_database_privilege``/``has_schema_privilege``/
``has_table_privilege`` for the connected role, so grants through roles it belongs to count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import asyncpg

from cdcd.sinks import TableMapping
from cdcd.sinks.postgres.sql import ident, qualified

__all__ = ["missing_grants"]

_TABLE_PRIVILEGES: tuple[str, ...] = ("SELECT", "INSERT", "UPDATE", "DELETE")
_OFFSETS_PRIVILEGES: tuple[str, ...] = ("SELECT", "INSERT", "UPDATE")


async def missing_grants(
    conn: asyncpg.Connection,
    mappings: Iterable[TableMapping],
    offsets: Callable[[TableMapping], tuple[str, str]] | None = None,
) -> list[str]:
    """The statements (without ``;``) that give the connected role what it lacks, in order.
    ``offsets(mapping)`` is the (schema, table) of the offsets table serving ``mapping``."""
    role, database = await conn.fetchrow("SELECT current_user, current_database()")
    to = ident(role)
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
        add(f"GRANT {', '.join(lacking)} ON DATABASE {ident(database)} TO {to}")
    # (schema, create, tables in it with the privileges each needs)
    wanted: list[tuple[str, bool, list[tuple[str, tuple[str, ...]]]]] = []
    for m in mappings:
        t = m.target_table
        data: list[tuple[str, tuple[str, ...]]] = [
            (n, _TABLE_PRIVILEGES) for n in (t, f"{t}_static", f"{t}_history")
        ]
        if offsets is None:
            wanted.append((m.target_schema, m.create, data))
            continue
        o_schema, o_table = offsets(m)
        if o_schema == m.target_schema:
            wanted.append((m.target_schema, m.create, [*data, (o_table, _OFFSETS_PRIVILEGES)]))
        else:
            wanted.append((m.target_schema, m.create, data))
            wanted.append((o_schema, m.create, [(o_table, _OFFSETS_PRIVILEGES)]))
    for schema, create, tables in wanted:
        if not await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema):
            if not create:
                add(f"CREATE SCHEMA {ident(schema)}  -- then create the tables (create_tables = false)")
            continue
        schema_needs = ["USAGE", "CREATE"] if create else ["USAGE"]
        lacking = [
            p
            for p in schema_needs
            if not await conn.fetchval("SELECT has_schema_privilege($1, $2)", schema, p)
        ]
        if lacking:
            add(f"GRANT {', '.join(lacking)} ON SCHEMA {ident(schema)} TO {to}")
        needs = dict(tables)
        existing = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p') ORDER BY 1",
            schema,
            list(needs),
        )
        for row in existing:
            name = qualified(schema, row["relname"])
            lacking = [
                p for p in needs[row["relname"]]
                if not await conn.fetchval("SELECT has_table_privilege($1, $2)", name, p)
            ]  # fmt: skip
            if lacking:
                add(f"GRANT {', '.join(lacking)} ON {name} TO {to}")
    return out

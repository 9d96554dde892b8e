"""What the PostgreSQL and ClickHouse layouts share: one physical destination table, the source
columns it stores, and its column order (key, values with their list-key companions, metadata)."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from cdcd.schema import Column

__all__ = ["LIST_KEYS_PREFIX", "Layout"]

# Companion column of a non-frozen list: the timeuuids of its cells (list element deltas address
# cells by timeuuid), ``uuid[]`` in PostgreSQL, ``Array(UUID)`` in ClickHouse.
LIST_KEYS_PREFIX = "_cdc_keys_"


class Layout(msgspec.Struct, frozen=True, kw_only=True):
    """One physical destination table and how source columns map onto it."""

    meta_columns: ClassVar[tuple[str, ...]] = ()  # the destination's metadata columns, last

    table: str
    key: tuple[Column, ...]  # primary key (main table) or partition key (static side table)
    clustering_order: tuple[str, ...]  # "asc"/"desc" of the clustering part of ``key``
    values: tuple[Column, ...]  # non-key source columns stored here
    list_keys: tuple[str, ...]  # non-frozen list columns (each has a LIST_KEYS_PREFIX companion)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.key)

    def value_columns(self) -> list[str]:
        """Physical non-key, non-metadata columns, in table order."""
        out = []
        for c in self.values:
            out.append(c.name)
            if c.name in self.list_keys:
                out.append(LIST_KEYS_PREFIX + c.name)
        return out

    def all_columns(self) -> list[str]:
        return [*self.key_names, *self.value_columns(), *self.meta_columns]

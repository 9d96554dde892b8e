"""cdcd's Scylla CDC source: driver session, generation discovery, per-group readers, decoding."""

from __future__ import annotations

__all__: list[str] = []

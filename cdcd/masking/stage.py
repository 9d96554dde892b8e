"""``MaskStage``: the shared stage that masks every change event before the fan-out.

It runs once per read batch in the group's ``SharedReader`` (and in the catch-up readers of
detached branches, through the same chain), so every destination branch, its validation,
the dead-letter store, the staleness audit, logs and traces only ever see masked values.
What it masks in an event: ``key``, ``values``, ``preimage``, ``postimage``, removed set
elements in ``deleted_elements`` (map keys, list cell keys and UDT field names are not values
and stay), and range-delete bounds.

A range delete whose bounds hold a masked clustering column cannot be applied (a hash does not
keep the order of the values): it is rejected (stage ``mask``, to the validation queue) with
its bounds masked.

``settle()`` is awaited by the reader after ``process()`` and before anything is handed on:
it writes the originals of new tokens to the token vault (``cdcd.masking.vault``) and raises
``MaskingUnavailable`` (retriable) when it cannot; the reader then reads the batch again later,
so nothing is ever handed on with a token that does not resolve.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from cdcd.events import ChangeEvent, Op
from cdcd.masking.plan import TablePlan
from cdcd.masking.vault import TokenVault
from cdcd.stages import Rejection, RejectionLike, StageResult

__all__ = ["MaskStage"]


class MaskStage:
    """Masks the events of one table. ``set_columns``: names of set-typed columns (their removed
    elements are values); ``clustering``: clustering column names in order (range bounds)."""

    name = "mask"

    def __init__(
        self,
        plan: TablePlan,
        *,
        vault: TokenVault | None = None,
        set_columns: frozenset[str] = frozenset(),
        clustering: Sequence[str] = (),
        on_settled: Callable[[bool, str | None], None] | None = None,
    ) -> None:
        self.plan = plan
        self.vault = vault
        self.set_columns = set_columns
        self.clustering = tuple(clustering)
        self.on_settled = on_settled  # (ok, error) after each settle(): the table's masking state

    def process(self, events: Sequence[ChangeEvent]) -> StageResult:
        passed: list[ChangeEvent] = []
        rejected: list[RejectionLike] = []
        for e in events:
            masked, refused = self.mask_event(e)
            if refused is None:
                passed.append(masked)
            else:
                rejected.append(Rejection(event=masked, stage=self.name, reason=refused))
        return StageResult(passed=passed, rejected=rejected)

    async def settle(self) -> None:
        if self.vault is None:
            return
        try:
            await self.vault.settle()
        except Exception as exc:
            if self.on_settled is not None:
                self.on_settled(False, str(exc))
            raise
        if self.on_settled is not None:
            self.on_settled(True, None)

    # ------------------------------------------------------------------------------ events
    def mask_event(self, e: ChangeEvent) -> tuple[ChangeEvent, str | None]:
        """The masked copy of ``e`` and, for an event that cannot be applied masked, why."""
        changes: dict[str, Any] = {}
        key = self._dict(e.key)
        if key is not None:
            changes["key"] = key
        values = self._dict(e.values)
        if values is not None:
            changes["values"] = values
        for image in ("preimage", "postimage"):
            img = getattr(e, image)
            masked = self._dict(img) if img else None
            if masked is not None:
                changes[image] = masked
        if e.deleted_elements:
            de = self._deleted_elements(e)
            if de is not None:
                changes["deleted_elements"] = de
        refused = None
        if e.range is not None and e.op == Op.RANGE_DELETE:
            bounds, refused = self._range(e)
            if bounds is not None:
                changes["range"] = bounds
        return (msgspec.structs.replace(e, **changes) if changes else e), refused

    def _dict(self, d: dict[str, Any]) -> dict[str, Any] | None:
        """``d`` with its masked columns masked; None when none of its columns is masked."""
        masker = self.plan.masker
        out: dict[str, Any] | None = None
        for col, v in d.items():
            m = masker(col)
            if m is None:
                continue
            if out is None:
                out = dict(d)
            out[col] = m.mask(v)
        return out

    def _deleted_elements(self, e: ChangeEvent) -> dict[str, list[Any]] | None:
        out: dict[str, list[Any]] | None = None
        for col, elements in e.deleted_elements.items():
            m = self.plan.masker(col)
            if m is None or not m.whole or not self._is_set(col, e, elements):
                continue
            if out is None:
                out = dict(e.deleted_elements)
            out[col] = m.mask_elements(elements)
        return out

    def _is_set(self, col: str, e: ChangeEvent, elements: list[Any]) -> bool:
        if col in self.set_columns:
            return True
        # A column added after start-up: removed set elements are values; map keys come with a
        # dict delta, list cells are timeuuids, UDT fields names. When in doubt, mask.
        if isinstance(e.values.get(col), dict):
            return False
        return not all(isinstance(x, uuid.UUID) for x in elements)

    def _range(self, e: ChangeEvent) -> tuple[Any, str | None]:
        r = e.range
        assert r is not None
        masked_cols = [
            (i, m) for i, c in enumerate(self.clustering) if (m := self.plan.masker(c)) is not None
        ]
        if not masked_cols:
            return None, None

        def bound(values: tuple[Any, ...]) -> tuple[Any, ...]:
            out = list(values)
            for i, m in masked_cols:
                if i < len(out):
                    out[i] = m.mask(out[i])
            return tuple(out)

        touched = [self.clustering[i] for i, _ in masked_cols if i < max(len(r.start), len(r.end))]
        bounds = msgspec.structs.replace(r, start=bound(r.start), end=bound(r.end))
        if not touched:
            return bounds, None
        return bounds, (
            f"range delete bounded on masked clustering column(s) {', '.join(touched)}: masked values "
            "do not keep the order of the originals, so the range cannot be applied"
        )


def table_stage(
    plan: TablePlan,
    schema: Any,
    vault: TokenVault | None,
    on_settled: Callable[[bool, str | None], None] | None = None,
) -> MaskStage:
    """The stage for one table, from its plan and source schema (``cdcd.schema.TableSchema``)."""
    sets = frozenset(c.name for c in schema.columns if c.type.name == "set")
    return MaskStage(
        plan,
        vault=vault,
        set_columns=sets,
        clustering=[c.name for c in schema.clustering_key],
        on_settled=on_settled,
    )

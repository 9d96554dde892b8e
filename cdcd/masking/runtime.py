"""``Masking``: what the daemon needs of masking, in one object (``cdcd.app.daemon``).

* start-up: ``check(schemas)`` refuses plans that cannot work against the real tables (key
  columns masked by a non-deterministic strategy, UDT fields that do not exist) as
  ``ConfigError`` naming the config key;
* ``schema_for(table, schema)``: the schema the destinations are built from (masked columns
  are text, ``cdcd.masking.plan.masked_schema``);
* ``stages(table)``: the shared ``MaskStage`` of a table (none when nothing can be masked);
* fail closed: while a table's vault writes fail, its branches show the state
  ``masking-unavailable`` (``override``), ``/readyz`` names it (``ready_checks``), an ERROR is
  logged once (and an INFO when it works again);
* ``collector()``: ``cdcd_masked_values_total{table, class, strategy, replica}``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cdcd.config import Config
from cdcd.errors import ConfigError, ConfigErrors
from cdcd.masking.config import build_plans, key_bytes
from cdcd.masking.plan import TablePlan, masked_schema
from cdcd.masking.stage import MaskStage, table_stage
from cdcd.masking.vault import TokenVault
from cdcd.ops.logging import get_logger, scrub
from cdcd.schema import TableSchema

__all__ = ["Masking"]

log = get_logger("cdcd.masking")


class Masking:
    def __init__(self, cfg: Config, *, replica: Callable[[], str] = lambda: "") -> None:
        m = cfg.masking
        vault_key = key_bytes(m.vault_key)
        self.vault: TokenVault | None = None
        if vault_key is not None and m.vault_dsn is not None and m.vault_dsn.get():
            self.vault = TokenVault(m.vault_dsn.get(), vault_key, table=m.vault_table)
        self.plans: dict[str, TablePlan] = build_plans(cfg, self.vault.token if self.vault else None)
        self.cfg = cfg
        self.replica = replica
        self.down: dict[str, str] = {}  # table -> why its masking cannot run
        self._stages: dict[str, MaskStage] = {}

    # ----------------------------------------------------------------------------- start-up
    def check(self, schemas: Mapping[str, TableSchema]) -> None:
        problems: list[ConfigError] = []
        for t in self.cfg.tables:
            plan = self.plans.get(t.source)
            schema = schemas.get(t.source)
            if plan is None or schema is None:
                continue
            for key, message in [*plan.check_keys(schema, lambda c: c), *plan.unknown_fields(schema)]:
                problems.append(ConfigError(message, key=key))
            for name, dest in self.cfg.destinations.items():
                ht = getattr(dest, "hypertables", {}).get(t.source)
                if ht is None:
                    continue
                m = plan.masker(ht.time_column)
                if m is not None and (m.changes_type or m.fields):
                    problems.append(ConfigError(
                        f"{t.source}.{ht.time_column} is masked (text in the destinations): it cannot be "
                        "the hypertable's time column",
                        key=f'destinations.{name}.hypertables."{t.source}".time_column',
                    ))  # fmt: skip
            self._stages[t.source] = table_stage(
                plan, schema, self.vault, on_settled=functools.partial(self._settled, t.source)
            )
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise ConfigErrors(problems)

    def schema_for(self, table: str, schema: TableSchema) -> TableSchema:
        return masked_schema(schema, self.plans.get(table))

    def stages(self, table: str) -> list[MaskStage]:
        stage = self._stages.get(table)
        return [] if stage is None else [stage]

    # ------------------------------------------------------------------------- fail closed
    def _settled(self, table: str, ok: bool, error: str | None) -> None:
        if ok:
            if self.down.pop(table, None) is not None:
                log.info("masking available again; the table replicates", table=table)
            return
        if table not in self.down:
            log.error(
                "masking unavailable: the table is stopped and nothing is written in clear",
                table=table, error=scrub(error or ""),
            )  # fmt: skip
        self.down[table] = error or "masking unavailable"

    def override(self, statuses: Sequence[Any]) -> list[Any]:
        """Pipeline statuses with the state of tables whose masking is down replaced."""
        if not self.down:
            return list(statuses)
        return [
            msgspec.structs.replace(s, state="masking-unavailable", last_error=scrub(self.down[s.table]))
            if s.table in self.down and s.state not in ("done", "closed", "terminated", "failed")
            else s
            for s in statuses
        ]

    def ready_checks(self, make: Callable[..., Any]) -> dict[str, Any]:
        """``/readyz`` entries ``masking:<table>``: one per table with masking, failing while down."""
        return {
            f"masking:{table}": make(
                ok=table not in self.down,
                detail=f"masking-unavailable: {scrub(self.down[table])}" if table in self.down else "",
            )
            for table in self._stages
        }

    # ----------------------------------------------------------------------------- metrics
    def collector(self) -> Collector:
        return _Collector(self)

    async def aclose(self) -> None:
        if self.vault is not None:
            await self.vault.aclose()


class _Collector(Collector):
    def __init__(self, masking: Masking) -> None:
        self.masking = masking

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "cdcd_masked_values",
            "Values masked before anything left cdcd, by data class and strategy",
            labels=["table", "class", "strategy", "replica"],
        )
        replica = self.masking.replica()
        for table, plan in self.masking.plans.items():
            for (cls, strategy), n in list(plan.counts.items()):
                fam.add_metric([table, cls, strategy, replica], n)
        yield fam

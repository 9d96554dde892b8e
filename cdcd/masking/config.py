"""Checks of ``[masking]``, ``[[masking.rules]]`` and ``[tables.masking]`` (``cdcd.config``), and
the plans built from them (``build_plans``). Keys must be 32 bytes written as 64 hex characters
and come from the environment or a file (R-70); every strategy used must have its key."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from cdcd.config.model import ColumnMask, Config, MaskingConfig
from cdcd.config.values import Secret, join_key
from cdcd.masking.plan import ColumnRule, TablePlan

if TYPE_CHECKING:
    from cdcd.config.checks import Finisher

__all__ = ["build_plans", "check_masking", "key_bytes", "table_rules"]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_COLUMN = re.compile(r"[A-Za-z0-9_]{1,48}(\.[A-Za-z0-9_]{1,48})?")


def key_bytes(secret: Secret | None) -> bytes | None:
    return None if secret is None or not secret.get() else bytes.fromhex(secret.get().strip())


def _rule(spec: str | ColumnMask, origin: str) -> ColumnRule:
    if isinstance(spec, str):
        return ColumnRule(strategy=spec, origin=origin)  # type: ignore[arg-type]
    return ColumnRule(
        strategy=spec.strategy,
        cls=spec.class_,
        keep=spec.keep,
        value=spec.value,
        null=spec.null,
        origin=origin,
    )


def table_rules(
    cfg: Config, index: int
) -> tuple[dict[str, ColumnRule], dict[str, dict[str, ColumnRule]], list[tuple[re.Pattern[str], ColumnRule]]]:
    """(column rules, field rules per column, pattern rules) of ``cfg.tables[index]``."""
    t = cfg.tables[index]
    columns: dict[str, ColumnRule] = {}
    fields: dict[str, dict[str, ColumnRule]] = {}
    for name, spec in t.masking.items():
        origin = join_key(f"tables[{index}].masking", name)
        col, _, field = name.partition(".")
        if field:
            fields.setdefault(col, {})[field] = _rule(spec, origin)
        else:
            columns[col] = _rule(spec, origin)
    rules = [
        (re.compile(r.pattern), _rule(r, f"masking.rules[{i}]")) for i, r in enumerate(cfg.masking.rules)
    ]
    return columns, fields, rules


def build_plans(cfg: Config, tokenize: Callable[[str, str], str] | None) -> dict[str, TablePlan]:
    """Source table -> its plan (tables where nothing can be masked are left out)."""
    hash_key = key_bytes(cfg.masking.hash_key)
    out = {}
    for i, t in enumerate(cfg.tables):
        columns, fields, rules = table_rules(cfg, i)
        plan = TablePlan(
            t.source, columns=columns, fields=fields, rules=rules, hash_key=hash_key, tokenize=tokenize
        )
        if not plan.empty:
            out[t.source] = plan
    return out


def check_masking(fin: Finisher, cfg: Config) -> Config:
    """Resolve ``*_file`` keys of ``[masking]`` and report every problem to ``fin``."""
    m: MaskingConfig = fin.section(cfg.masking, "masking")
    for name in ("hash_key", "vault_key"):
        value = getattr(m, name)
        key = f"masking.{name}"
        if value is None or not value.get():
            continue
        given_literally = key not in fin.from_env and getattr(m, f"{name}_file") is None
        if given_literally:
            fin.fail(key, f'secrets must not be written in the config file: use "${{VAR}}" or {name}_file')
        elif not _HEX64.fullmatch(value.get().strip()):
            fin.fail(
                key, "expected 32 random bytes written as 64 hex characters (e.g. `openssl rand -hex 32`)"
            )
    if m.vault_dsn is not None and m.vault_dsn.get():
        scheme = m.vault_dsn.get().split("://", 1)[0] if "://" in m.vault_dsn.get() else ""
        if scheme not in ("postgresql", "postgres"):
            fin.fail(
                "masking.vault_dsn", 'expected a postgresql:// URL such as "postgresql://user@host:5432/db"'
            )

    used: dict[str, str] = {}  # strategy -> first key using it
    for i, r in enumerate(m.rules):
        key = f"masking.rules[{i}]"
        try:
            re.compile(r.pattern)
        except re.error as exc:
            fin.fail(f"{key}.pattern", f"not a valid regular expression: {exc}")
        used.setdefault(r.strategy, key)
    for i, t in enumerate(cfg.tables):
        for name, spec in t.masking.items():
            key = join_key(f"tables[{i}].masking", name)
            if not _COLUMN.fullmatch(name):
                fin.fail(key, 'expected a column name or "column.field" (letters, digits, _)')
            strategy = spec if isinstance(spec, str) else spec.strategy
            used.setdefault(strategy, key)
    if "hash" in used and not _present(m.hash_key):
        fin.fail(used["hash"], "strategy hash needs masking.hash_key (or masking.hash_key_file)")
    if "tokenize" in used:
        for need in ("vault_key", "vault_dsn"):
            if not _present(getattr(m, need)):
                fin.fail(used["tokenize"], f"strategy tokenize needs masking.{need} (or masking.{need}_file)")
    return msgspec.structs.replace(cfg, masking=m)


def _present(value: Any) -> bool:
    return value is not None and bool(value.get())

"""``cdcd.toml``: typed, closed, frozen configuration (style.md §7.6).

``load(path)`` reads the file and returns a ``Config``; every problem raises ``ConfigError``
naming the file, the key path (``tables[0].delete``, ``destinations.pg.dsn``), what was expected
and what was found. The steps, in order:

1. TOML is decoded into plain data (``msgspec.toml``; syntax errors carry line and column).
2. ``${VAR}`` (and ``${VAR:-default}``) in any string value is replaced from the environment;
   ``$$`` is a literal ``$``. A missing variable is an error naming the key and the variable.
3. The data is converted into the Structs below (unknown keys are errors). Durations are strings
   such as ``"250ms"``, ``"2s"``, ``"1m30s"``, ``"24h"`` and become ``Duration`` (float seconds).
4. Secrets: a ``Secret`` field ``x`` may instead be read from the file named by ``x_file``. A
   password or token written literally in the file, or a DSN/URL with a literal password
   (``user:pw@``, ``?password=``, libpq ``password=``), is refused (R-70): use ``${VAR}`` or
   ``x_file``. ``Secret`` never shows its value in ``repr``, ``str`` or error messages; call
   ``.get()`` where the value is really needed. A plain URL (ClickHouse ``url``) may not hold a
   password at all.
5. Cross-field checks: destinations named by tables exist, no table or target twice, hypertable
   options only for tables routed to that destination, TLS files exist.

The steps go on after an error, so one run reports every unset variable and every bad key
(``ConfigErrors``, one line each); what an unset variable's empty stand-in causes downstream is
not reported twice.

Every field below has a comment; ``cdcd.toml.example`` repeats them for operators.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from cdcd.config.checks import Finisher, Problems, related
from cdcd.config.explain import locate_error
from cdcd.config.model import (
    BatchConfig,
    BreakerConfig,
    ClickHouseDestination,
    Config,
    Destination,
    HttpConfig,
    HypertableConfig,
    InstanceConfig,
    LoggingConfig,
    PipelineConfig,
    PostgresDestination,
    RetryConfig,
    SourceConfig,
    StateConfig,
    TableConfig,
    TimescaleDestination,
    TlsConfig,
    TracingConfig,
)
from cdcd.config.values import Duration, Secret, dec_hook, join_key
from cdcd.errors import ConfigError

__all__ = [
    "BatchConfig",
    "BreakerConfig",
    "ClickHouseDestination",
    "Config",
    "Destination",
    "Duration",
    "HttpConfig",
    "HypertableConfig",
    "InstanceConfig",
    "LoggingConfig",
    "PipelineConfig",
    "PostgresDestination",
    "RetryConfig",
    "Secret",
    "SourceConfig",
    "StateConfig",
    "TableConfig",
    "TimescaleDestination",
    "TlsConfig",
    "TracingConfig",
    "load",
    "loads",
    "redacted",
]


# --------------------------------------------------------------------------------------- loading
def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``. Raises ``ConfigError`` (file, key path, expected, got)."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=name) from None
    return loads(data, file=name, env=env, base_dir=str(Path(name).parent))


def loads(
    data: str | bytes,
    *,
    file: str = "<config>",
    env: Mapping[str, str] | None = None,
    base_dir: str = ".",
) -> Config:
    """Validate TOML text. ``env`` defaults to ``os.environ``; relative ``*_file`` paths are
    resolved against ``base_dir``. Every problem found is reported at once: one ``ConfigError``,
    or ``ConfigErrors`` holding each (every unset variable, every bad key)."""
    env = os.environ if env is None else env
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from None
    problems = Problems(file)
    from_env: set[str] = set()
    raw = _substitute(raw, "", env, from_env, problems)
    cfg = _convert(raw, from_env, problems)
    if cfg is not None:
        cfg = Finisher(file, from_env, base_dir, problems).run(cfg)
    problems.raise_if_any()
    assert cfg is not None
    return cfg


def _convert(raw: Any, from_env: set[str], problems: Problems) -> Config | None:
    """``raw`` as a ``Config``. msgspec stops at the first error: each one is reported, the
    offending key is removed (its default applies) and the conversion tried again, so one pass
    finds the errors of every section. None when a removal cannot help (a required key)."""
    removed: list[str] = []
    for _ in range(100):
        try:
            return msgspec.convert(raw, Config, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            error, where = locate_error(str(exc), raw, from_env, problems.file)
        if error.key and any(related(error.key, k) for k in removed):
            return None  # a consequence of a removal (a required key): reported already
        problems.add(error)
        key = _remove(raw, where)
        if key is None:
            return None
        removed.append(key)
    return None


def _remove(raw: Any, where: list[str | int]) -> str | None:
    """Delete the deepest table key on the path ``where`` from ``raw``; its key path, or None."""
    for depth in range(len(where), 0, -1):
        *parents, last = where[:depth]
        node = raw
        for step in parents:
            node = node[step]
        if isinstance(last, str) and isinstance(node, dict) and last in node:
            del node[last]
            key = ""
            for step in where[:depth]:
                key = f"{key}[{step}]" if isinstance(step, int) else join_key(key, step)
            return key
    return None


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data (durations as text), secrets as ``"***"``."""

    def enc(obj: Any) -> Any:
        if isinstance(obj, Secret):
            return "***"
        if isinstance(obj, Duration):
            return str(obj)
        if isinstance(obj, str):  # validated names (SourceTable, TargetTable, Identifier)
            return str.__str__(obj)
        raise NotImplementedError(type(obj))

    out: dict[str, Any] = msgspec.to_builtins(cfg, enc_hook=enc)
    return out


# ------------------------------------------------------------------------ ${VAR} substitution
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


def _substitute(node: Any, path: str, env: Mapping[str, str], from_env: set[str], problems: Problems) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, join_key(path, k), env, from_env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", env, from_env, problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        var = m.group(1)
        if var is None:
            problems.report(
                path, f"bad variable reference {m.group(0)!r}; write ${{NAME}} or ${{NAME:-default}}"
            )
            problems.skip.add(path)
            return ""
        from_env.add(path)
        value = env.get(var)
        if value is None:
            if m.group(2) is not None:
                return m.group(2)
            problems.report(path, f"environment variable {var} is not set")
            problems.skip.add(path)  # what the empty stand-in causes later is no news
            return ""
        return value

    return _VAR.sub(repl, node)

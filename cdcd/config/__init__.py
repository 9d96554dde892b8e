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
   password or token written literally in the file, or a DSN/URL with a literal password, is
   refused (R-70): use ``${VAR}`` or ``x_file``. ``Secret`` never shows its value in ``repr``,
   ``str`` or error messages; call ``.get()`` where the value is really needed.
5. Cross-field checks: destinations named by tables exist, no table or target twice, hypertable
   options only for tables routed to that destination, TLS files exist.

Every field below has a comment; ``cdcd.toml.example`` repeats them for operators.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from cdcd.config.checks import Finisher
from cdcd.config.explain import explain
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
    resolved against ``base_dir``."""
    env = os.environ if env is None else env
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=file) from None
    from_env: set[str] = set()
    raw = _substitute(raw, "", env, from_env, file)
    try:
        cfg = msgspec.convert(raw, Config, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise explain(str(exc), raw, from_env, file) from None
    return Finisher(file, from_env, base_dir).run(cfg)


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


def _substitute(node: Any, path: str, env: Mapping[str, str], from_env: set[str], file: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, join_key(path, k), env, from_env, file) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", env, from_env, file) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        var = m.group(1)
        if var is None:
            raise ConfigError(
                f"bad variable reference {m.group(0)!r}; write ${{NAME}} or ${{NAME:-default}}",
                file=file,
                key=path,
            )
        from_env.add(path)
        value = env.get(var)
        if value is None:
            if m.group(2) is not None:
                return m.group(2)
            raise ConfigError(f"environment variable {var} is not set", file=file, key=path)
        return value

    return _VAR.sub(repl, node)

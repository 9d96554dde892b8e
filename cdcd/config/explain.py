"""msgspec ``ValidationError`` text -> ``ConfigError`` with a friendly key path.

msgspec says ``Expected `int`, got `str` - at `$.destinations[...].pool_size` ``; this module
turns that into ``destinations.pg.pool_size: expected an integer, got "x"``: it walks the raw data
and the Config type along the path, names dict keys msgspec leaves as ``[...]``, lists the valid
keys or choices, and never shows a value that came from the environment.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

import msgspec

from cdcd.config.model import Config, Destination
from cdcd.config.values import PATTERN_NAMES, dec_hook, join_key, show_value, unwrap
from cdcd.errors import ConfigError

__all__ = ["explain", "locate_error"]


# --------------------------------------------------------------- msgspec errors -> friendly text
_MSG = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "float": "a number",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
    "null": "nothing",
}


def explain(message: str, raw: Any, from_env: set[str], file: str) -> ConfigError:
    """The ``ConfigError`` for one msgspec validation message about ``raw``."""
    return locate_error(message, raw, from_env, file)[0]


def locate_error(
    message: str, raw: Any, from_env: set[str], file: str
) -> tuple[ConfigError, list[str | int]]:
    """``explain``, plus where the error is in ``raw``: the keys and list indices leading to the
    offending value (for an unknown or missing key: to that key)."""
    m = _MSG.match(message)
    assert m is not None
    msg, tokens = m.group("msg"), _TOKEN.findall(m.group("path") or "$")[0:]
    path, tp, value, where = locate([t[0] or t[1] for t in tokens], raw)
    extra = re.match(r"Object (contains unknown|missing required) field `([^`]+)`", msg)
    if extra:
        key = join_key(path, extra.group(2))
        where = [*where, extra.group(2)]
        if extra.group(1) == "missing required":
            return ConfigError("required key is missing", file=file, key=key), where
        known = ", ".join(f.encode_name for f in struct_fields(tp)) if struct_fields(tp) else "none"
        return ConfigError(f"unknown key; expected one of: {known}", file=file, key=key), where
    shown = "(the value from the environment)" if path in from_env else show_value(value)
    if msg.startswith(("Invalid enum value", "Invalid value")):
        options = _choices(tp, path)
        if options:
            return ConfigError(f"expected one of {options}, got {shown}", file=file, key=path), where
    pattern = re.match(r"Expected `str` matching regex '(.*)'$", msg)
    regex = pattern.group(1).replace("\\\\", "\\") if pattern else ""  # msgspec doubles backslashes
    if regex in PATTERN_NAMES:
        return ConfigError(f"expected {PATTERN_NAMES[regex]}, got {shown}", file=file, key=path), where
    t = re.match(r"Expected `(\w+)`(.*?)(?:, got `(\w+)`)?$", msg)
    if t:
        expected = _TYPE_WORDS.get(t.group(1), t.group(1)) + t.group(2).replace("`", "")
        expected = expected.replace("an array of length >= 1", "a non-empty array")
        expected = expected.replace("a table of length >= 1", "a non-empty table")
        return ConfigError(f"expected {expected}, got {shown}", file=file, key=path), where
    if path in from_env:
        msg = re.sub(r", got .*$", "", msg)
        return ConfigError(f"{msg} (the value from the environment)", file=file, key=path), where
    return ConfigError(msg, file=file, key=path or None), where


def _choices(tp: Any, path: str) -> str:
    tp = unwrap(tp)
    if typing.get_origin(tp) is Literal:
        return ", ".join(f'"{v}"' for v in typing.get_args(tp))
    if path.endswith(".type") or path == "type":
        return ", ".join(f'"{c.__struct_config__.tag}"' for c in typing.get_args(Destination))
    return ""


def struct_fields(tp: Any) -> tuple[msgspec.structs.FieldInfo, ...]:
    tp = unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return msgspec.structs.fields(tp)
    return ()


def _pick_member(tp: Any, value: Any) -> Any:
    """A tagged union member chosen by the ``type`` key of ``value`` (or the union itself)."""
    tp = unwrap(tp)
    if isinstance(tp, types.UnionType) and isinstance(value, dict):
        for member in typing.get_args(tp):
            conf = getattr(member, "__struct_config__", None)
            if conf is not None and conf.tag_field and value.get(conf.tag_field) == conf.tag:
                return member
    return tp


def locate(tokens: list[str], raw: Any) -> tuple[str, Any, Any, list[str | int]]:
    """Walk ``raw`` and the Config type along a msgspec path; ``[...]`` (an unnamed dict key)
    is resolved by finding the entry that fails on its own. Returns (key path, type, value,
    the keys and indices of ``raw`` walked)."""
    path: str = ""
    tp: Any = Config
    value: Any = raw
    where: list[str | int] = []
    for tok in tokens:
        tp = _pick_member(tp, value)
        if tok.isdigit():
            value = value[int(tok)] if isinstance(value, list) and int(tok) < len(value) else None
            args = typing.get_args(unwrap(tp))
            tp = args[0] if args else Any
            path = f"{path}[{tok}]"
            where.append(int(tok))
        elif tok == "...":
            args = typing.get_args(unwrap(tp))
            tp = args[1] if len(args) == 2 else Any
            key = _failing_key(value, tp)
            value = value.get(key) if isinstance(value, dict) and key is not None else None
            path = join_key(path, key if key is not None else "<?>")
            if key is not None:
                where.append(key)
        else:
            field = next((f for f in struct_fields(tp) if f.encode_name == tok), None)
            tp = field.type if field is not None else Any
            value = value.get(tok) if isinstance(value, dict) else None
            path = join_key(path, tok)
            where.append(tok)
    return path, _pick_member(tp, value), value, where


def _failing_key(value: Any, tp: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    for key, item in value.items():
        try:
            msgspec.convert(item, tp, dec_hook=dec_hook)
        except msgspec.ValidationError:
            return str(key)
    return None

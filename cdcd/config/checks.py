"""Checks that need more than one field, the environment or the file system: ``x_file`` secrets,
literal secrets refused (R-70), TLS file paths, hosts/URLs, destination routing, duplicates."""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import msgspec

from cdcd.config.model import (
    ClickHouseDestination,
    Config,
    Destination,
    HttpConfig,
    InstanceConfig,
    SourceConfig,
    StateConfig,
    TimescaleDestination,
    TlsConfig,
)
from cdcd.config.values import Secret, join_key, unwrap
from cdcd.errors import ConfigError

__all__ = ["Finisher"]


# ------------------------------------------------------------ secrets, files and cross-field checks
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s/]+)(?::(\d{1,5}))?")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:{}-]+")
_LITERAL_FORBIDDEN = frozenset({"password", "admin_token"})


class Finisher:
    """Checks that need more than one field, the environment or the file system."""

    def __init__(self, file: str, from_env: set[str], base_dir: str) -> None:
        self.file = file
        self.from_env = from_env
        self.base_dir = base_dir

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    def run(self, cfg: Config) -> Config:
        cfg = msgspec.structs.replace(
            cfg,
            source=self.section(cfg.source, "source"),
            state=self.section(cfg.state, "state"),
            http=self.section(cfg.http, "http"),
            destinations={
                name: self.section(dest, join_key("destinations", name))
                for name, dest in cfg.destinations.items()
            },
        )
        self.check_source(cfg.source)
        self.check_state(cfg.state)
        self.check_http(cfg.http)
        for name, dest in cfg.destinations.items():
            self.check_destination(name, dest, cfg)
        self.check_tables(cfg)
        if not cfg.instance.replica:
            cfg = msgspec.structs.replace(cfg, instance=InstanceConfig(replica=socket.gethostname()))
        elif not _SAFE_NAME.fullmatch(cfg.instance.replica):
            raise self.fail("instance.replica", "expected letters, digits, '_', '.' or '-'")
        return cfg

    # -- secrets and files
    def section(self, sec: Any, path: str) -> Any:
        """Resolve ``x_file`` into Secret ``x``, refuse literal secrets, resolve TLS paths."""
        changes: dict[str, Any] = {}
        for f in msgspec.structs.fields(sec):
            value = getattr(sec, f.name)
            key = join_key(path, f.name)
            if isinstance(value, TlsConfig):
                changes[f.name] = self.section(value, key)
            elif f.name.endswith("_file") and value is not None:
                target = f.name[: -len("_file")]
                resolved = self.path(key, value)
                if hasattr(sec, target) and unwrap(_field_type(sec, target)) is Secret:
                    if target not in self.explicit(sec, path):
                        changes[target] = Secret(self.read_secret(key, resolved))
                    else:
                        raise self.fail(key, f"give either {target} or {f.name}, not both")
                changes[f.name] = resolved
        for f in msgspec.structs.fields(sec):
            value = getattr(sec, f.name)
            key = join_key(path, f.name)
            if isinstance(value, Secret) and not value.get():
                raise self.fail(key, "is empty (is the environment variable set to an empty string?)")
            if isinstance(value, Secret) and f.name not in changes and key not in self.from_env:
                self.refuse_literal(key, f.name, value)
            if f.name in sec.required_secrets and getattr(sec, f.name) is None and f.name not in changes:
                raise self.fail(key, f'required: give {f.name} (e.g. "${{VAR}}") or {f.name}_file')
        return msgspec.structs.replace(sec, **changes) if changes else sec

    def explicit(self, sec: Any, path: str) -> set[str]:
        """Secret fields given in the file (not left at their default)."""
        out = set()
        for f in msgspec.structs.fields(sec):
            value = getattr(sec, f.name)
            given = isinstance(value, Secret) and (f.default is msgspec.NODEFAULT or value != f.default)
            if given or join_key(path, f.name) in self.from_env:
                out.add(f.name)
        return out

    def refuse_literal(self, key: str, name: str, value: Secret) -> None:
        if not value.get():
            return
        if name in _LITERAL_FORBIDDEN:
            raise self.fail(
                key, f'secrets must not be written in the config file: use "${{VAR}}" or {name}_file'
            )
        try:
            has_password = urllib.parse.urlsplit(value.get()).password is not None
        except ValueError:
            has_password = False
        if has_password:
            raise self.fail(
                key, f'the URL holds a password: put it in "${{VAR}}" or {name}_file, not in the config file'
            )

    def path(self, key: str, value: str) -> str:
        p = Path(value) if os.path.isabs(value) else Path(self.base_dir) / value
        if not p.is_file():
            raise self.fail(key, f"file {str(p)!r} does not exist or is not a regular file")
        return str(p)

    def read_secret(self, key: str, path: str) -> str:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(key, f"cannot read {path!r}: {exc}") from None
        text = text.rstrip("\r\n")
        if not text:
            raise self.fail(key, f"file {path!r} is empty")
        return text

    # -- sections
    def check_source(self, src: SourceConfig) -> None:
        ports = set()
        for i, host in enumerate(src.hosts):
            m = _HOST.fullmatch(host.strip())
            if m is None or (m.group(2) is not None and not 0 < int(m.group(2)) < 65536):
                raise self.fail(f"source.hosts[{i}]", f'expected "host" or "host:port", got "{host}"')
            ports.add(int(m.group(2) or 9042))
        if len(ports) > 1:
            raise self.fail("source.hosts", f"all hosts must use the same port, got {sorted(ports)}")
        if (src.username is None) != (src.password is None):
            raise self.fail("source.username", "username and password must be given together")
        for name in ("poll_interval", "window", "generation_poll", "request_timeout", "connect_timeout"):
            if getattr(src, name) <= 0:
                raise self.fail(f"source.{name}", "expected a duration > 0")
        if src.max_window < src.window:
            raise self.fail("source.max_window", f"expected a duration >= source.window ({src.window})")
        self.check_tls(src.tls, "source.tls")

    def check_tls(self, tls: TlsConfig, path: str) -> None:
        if (tls.cert_file is None) != (tls.key_file is None):
            raise self.fail(f"{path}.cert_file", "cert_file and key_file must be given together")

    def check_state(self, st: StateConfig) -> None:
        scheme = urllib.parse.urlsplit(st.redis_url.get()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise self.fail(
                "state.redis_url", f'expected a redis://, rediss:// or unix:// URL, got "{scheme}:"'
            )
        if not _KEY_PREFIX.fullmatch(st.key_prefix):
            raise self.fail("state.key_prefix", "expected letters, digits and _ . - : { }")
        if st.checkpoint_interval <= 0:
            raise self.fail("state.checkpoint_interval", "expected a duration > 0")

    def check_http(self, http: HttpConfig) -> None:
        host, sep, port = http.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise self.fail("http.listen", f'expected "host:port", got "{http.listen}"')

    def check_destination(self, name: str, dest: Destination, cfg: Config) -> None:
        path = join_key("destinations", name)
        if not _SAFE_NAME.fullmatch(name):
            raise self.fail(path, "destination names may hold letters, digits, '_', '.' and '-' only")
        is_http = urllib.parse.urlsplit(getattr(dest, "url", "http:")).scheme in ("http", "https")
        if isinstance(dest, ClickHouseDestination) and not is_http:
            raise self.fail(f"{path}.url", f'expected an http:// or https:// URL, got "{dest.url}"')
        if isinstance(dest, TimescaleDestination):
            routed = {t.source for t in cfg.tables if name in t.destinations}
            for table in dest.hypertables:
                if table not in routed:
                    raise self.fail(
                        join_key(f"{path}.hypertables", table),
                        f"no [[tables]] entry sends {table} to destination {name}",
                    )

    def check_tables(self, cfg: Config) -> None:
        seen: dict[str, int] = {}
        targets: dict[tuple[str, str], int] = {}
        names = ", ".join(sorted(cfg.destinations))
        for i, t in enumerate(cfg.tables):
            if t.source in seen:
                raise self.fail(
                    f"tables[{i}].source", f"{t.source} is already configured in tables[{seen[t.source]}]"
                )
            seen[t.source] = i
            for j, d in enumerate(t.destinations):
                if d not in cfg.destinations:
                    raise self.fail(
                        f"tables[{i}].destinations[{j}]", f'unknown destination "{d}"; configured: {names}'
                    )
                if d in t.destinations[:j]:
                    raise self.fail(f"tables[{i}].destinations[{j}]", f'destination "{d}" is listed twice')
                target = (d, f"{t.target_schema}.{t.target_table}")
                if target in targets:
                    raise self.fail(
                        f"tables[{i}].target",
                        f"{target[1]} in destination {d} is already the target of tables[{targets[target]}]",
                    )
                targets[target] = i


def _field_type(sec: Any, name: str) -> Any:
    return next(f.type for f in msgspec.structs.fields(sec) if f.name == name)

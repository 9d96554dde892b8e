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
    TableConfig,
    TimescaleDestination,
    TlsConfig,
    TracingConfig,
)
from cdcd.config.values import Secret, join_key, unwrap
from cdcd.errors import ConfigError, ConfigErrors

__all__ = ["Finisher", "Problems", "related"]


# ------------------------------------------------------------ secrets, files and cross-field checks
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s/]+)(?::(\d{1,5}))?")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.:{}-]+")
_LITERAL_FORBIDDEN = frozenset({"password", "admin_token"})
# A libpq keyword DSN ("host=db password=x") or a URL query (?password=x) holding a password.
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)(?:ssl)?password\s*=", re.I)
_SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|password|cookie|credential", re.I)
_QUERY_PASSWORDS = frozenset({"password", "sslpassword"})


def related(key: str, other: str) -> bool:
    """``key`` and ``other`` are the same key or one lies inside the other."""
    if key == other:
        return True
    inner, outer = (key, other) if len(key) > len(other) else (other, key)
    return inner.startswith(outer) and inner[len(outer)] in ".["


class Problems:
    """The errors of one config file, collected so that one run reports all of them. Errors on
    keys listed in ``skip`` (their value came from a variable that is not set, already reported)
    are dropped, as are repeats."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigError] = []
        self.skip: set[str] = set()

    def add(self, error: ConfigError) -> None:
        key = error.key or ""
        if key and any(related(key, k) for k in self.skip):
            return
        if any(e.key == error.key and e.detail == error.detail for e in self.items):
            return
        self.items.append(error)

    def report(self, key: str, message: str) -> None:
        self.add(ConfigError(message, file=self.file, key=key))

    def raise_if_any(self) -> None:
        if len(self.items) == 1:
            raise self.items[0]
        if self.items:
            raise ConfigErrors(self.items)


class Finisher:
    """Checks that need more than one field, the environment or the file system. Every problem
    is reported to ``problems`` (the checks go on, so one run lists them all)."""

    def __init__(
        self, file: str, from_env: set[str], base_dir: str, problems: Problems | None = None
    ) -> None:
        self.file = file
        self.from_env = from_env
        self.base_dir = base_dir
        self.problems = problems or Problems(file)

    def fail(self, key: str, message: str) -> None:
        self.problems.report(key, message)

    def run(self, cfg: Config) -> Config:
        """The finished Config (``x_file`` secrets read, default replica name); problems are
        reported, and raised at the end when the caller gave no ``problems`` of its own."""
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
        self.check_tracing(cfg.tracing)
        for name, dest in cfg.destinations.items():
            self.check_destination(name, dest, cfg)
        self.check_tables(cfg)
        from cdcd.masking.config import check_masking

        cfg = check_masking(self, cfg)
        if not cfg.instance.replica:
            cfg = msgspec.structs.replace(cfg, instance=InstanceConfig(replica=socket.gethostname()))
        elif not _SAFE_NAME.fullmatch(cfg.instance.replica):
            self.fail("instance.replica", "expected letters, digits, '_', '.' or '-'")
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
                if resolved is None:
                    continue
                if hasattr(sec, target) and unwrap(_field_type(sec, target)) is Secret:
                    if target in self.explicit(sec, path):
                        self.fail(key, f"give either {target} or {f.name}, not both")
                        continue
                    secret = self.read_secret(key, resolved)
                    if secret is None:
                        continue
                    changes[target] = Secret(secret)
                changes[f.name] = resolved
        failed_files = {
            f.name[: -len("_file")]
            for f in msgspec.structs.fields(sec)
            if f.name.endswith("_file") and getattr(sec, f.name) is not None and f.name not in changes
        }
        for f in msgspec.structs.fields(sec):
            value = getattr(sec, f.name)
            key = join_key(path, f.name)
            if isinstance(value, Secret) and not value.get():
                self.fail(key, "is empty (is the environment variable set to an empty string?)")
            elif isinstance(value, Secret) and f.name not in changes and key not in self.from_env:
                self.refuse_literal(key, f.name, value.get())
            elif isinstance(value, str) and "://" in value:
                self.refuse_url_password(key, value, sec)
            if (
                f.name in sec.required_secrets
                and getattr(sec, f.name) is None
                and f.name not in changes
                and f.name not in failed_files
            ):
                self.fail(key, f'required: give {f.name} (e.g. "${{VAR}}") or {f.name}_file')
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

    def refuse_literal(self, key: str, name: str, value: str) -> None:
        """A secret written in the file itself (R-70): a password or token, or a DSN/URL that
        holds a password (``user:pw@``, ``?password=``, libpq ``password=``)."""
        if not value:
            return
        instead = f'use an environment variable ("${{VAR}}") or {name}_file'
        if name in _LITERAL_FORBIDDEN:
            self.fail(key, f"secrets must not be written in the config file: {instead}")
            return
        where = _password_in(value)
        if where:
            self.fail(key, f"the {where} holds a password: {instead}, not the config file")

    def refuse_url_password(self, key: str, value: str, sec: Any) -> None:
        """A plain (non-secret) URL, e.g. ClickHouse's ``url``, must not carry credentials."""
        where = _password_in(value)
        if where:
            alt = (
                'give the user as username and the password as password = "${VAR}" or password_file'
                if hasattr(sec, "password_file")
                else 'use an environment variable ("${VAR}")'
            )
            self.fail(key, f"the {where} holds a password: {alt}, not the config file")

    def path(self, key: str, value: str) -> str | None:
        p = Path(value) if os.path.isabs(value) else Path(self.base_dir) / value
        if not p.is_file():
            self.fail(key, f"file {str(p)!r} does not exist or is not a regular file")
            return None
        return str(p)

    def read_secret(self, key: str, path: str) -> str | None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.fail(key, f"cannot read {path!r}: {exc}")
            return None
        text = text.rstrip("\r\n")
        if not text:
            self.fail(key, f"file {path!r} is empty")
            return None
        return text

    # -- sections
    def check_source(self, src: SourceConfig) -> None:
        ports = set()
        for i, host in enumerate(src.hosts):
            m = _HOST.fullmatch(host.strip())
            if m is None or (m.group(2) is not None and not 0 < int(m.group(2)) < 65536):
                self.fail(f"source.hosts[{i}]", f'expected "host" or "host:port", got "{host}"')
                continue
            ports.add(int(m.group(2) or 9042))
        if len(ports) > 1:
            self.fail("source.hosts", f"all hosts must use the same port, got {sorted(ports)}")
        if (src.username is None) != (src.password is None):
            self.fail("source.username", "username and password must be given together")
        for name in ("poll_interval", "window", "generation_poll", "request_timeout", "connect_timeout"):
            if getattr(src, name) <= 0:
                self.fail(f"source.{name}", "expected a duration > 0")
        if src.max_window < src.window:
            self.fail("source.max_window", f"expected a duration >= source.window ({src.window})")
        self.check_tls(src.tls, "source.tls")

    def check_tls(self, tls: Any, path: str, scheme: str | None = None, tls_scheme: str = "") -> None:
        """``cert_file`` and ``key_file`` together; with a URL, TLS files only for its TLS scheme
        (``rediss``, ``https``): a CA or certificate given for a plaintext URL is a mistake."""
        if (tls.cert_file is None) != (tls.key_file is None):
            self.fail(f"{path}.cert_file", "cert_file and key_file must be given together")
        if scheme is not None and scheme != tls_scheme:
            for name in ("ca_file", "cert_file"):
                if getattr(tls, name) is not None:
                    self.fail(
                        f"{path}.{name}", f"is only used with a {tls_scheme}:// URL (TLS), got {scheme}://"
                    )

    def check_state(self, st: StateConfig) -> None:
        scheme = urllib.parse.urlsplit(st.redis_url.get()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            self.fail("state.redis_url", f'expected a redis://, rediss:// or unix:// URL, got "{scheme}:"')
        if not _KEY_PREFIX.fullmatch(st.key_prefix):
            self.fail("state.key_prefix", "expected letters, digits and _ . - : { }")
        if st.checkpoint_interval <= 0:
            self.fail("state.checkpoint_interval", "expected a duration > 0")
        self.check_tls(st, "state", scheme, "rediss")
        if not 3 <= st.lease_ttl <= 600:
            self.fail("state.lease_ttl", f'expected a duration from "3s" to "10m", got "{st.lease_ttl}"')

    def check_tracing(self, tr: TracingConfig) -> None:
        if tr.endpoint:
            u = urllib.parse.urlsplit(tr.endpoint)
            if u.scheme not in ("http", "https") or not u.hostname:
                self.fail("tracing.endpoint", f'expected an http:// or https:// URL, got "{tr.endpoint}"')
            elif _password_in(tr.endpoint):
                self.fail(
                    "tracing.endpoint",
                    'the URL holds a password: put credentials in tracing.headers ("${VAR}")',
                )
        for name, value in tr.headers.items():
            key = join_key("tracing.headers", name)
            if _SENSITIVE_HEADER.search(name) and key not in self.from_env:
                self.fail(
                    key,
                    'looks like a credential: use an environment variable ("${VAR}"), not the config file',
                )
            elif not value.get():
                self.fail(key, "is empty (is the environment variable set to an empty string?)")
        if tr.timeout <= 0:
            self.fail("tracing.timeout", "expected a duration > 0")

    def check_http(self, http: HttpConfig) -> None:
        host, sep, port = http.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            self.fail("http.listen", f'expected "host:port", got "{http.listen}"')

    def check_destination(self, name: str, dest: Destination, cfg: Config) -> None:
        path = join_key("destinations", name)
        if not _SAFE_NAME.fullmatch(name):
            self.fail(path, "destination names may hold letters, digits, '_', '.' and '-' only")
        if isinstance(dest, ClickHouseDestination):
            ch_scheme = urllib.parse.urlsplit(dest.url).scheme
            if ch_scheme not in ("http", "https"):
                self.fail(f"{path}.url", f'expected an http:// or https:// URL, got "{dest.url}"')
            self.check_tls(dest, path, ch_scheme, "https")
        elif dest.dsn is not None and dest.dsn.get():
            scheme = urllib.parse.urlsplit(dest.dsn.get()).scheme
            if scheme not in ("postgresql", "postgres"):
                self.fail(
                    f"{path}.dsn",
                    'expected a postgresql:// URL such as "postgresql://user@host:5432/db" '
                    '(the libpq keyword form "host=... dbname=..." is not supported)',
                )
        if isinstance(dest, TimescaleDestination):
            routed = {t.source for t in cfg.tables if name in t.destinations}
            for table in dest.hypertables:
                if table not in routed:
                    self.fail(
                        join_key(f"{path}.hypertables", table),
                        f"no [[tables]] entry sends {table} to destination {name}",
                    )

    def check_tables(self, cfg: Config) -> None:
        seen: dict[str, int] = {}
        targets: dict[tuple[str, str], int] = {}
        names = ", ".join(sorted(cfg.destinations))
        for i, t in enumerate(cfg.tables):
            if t.source in seen:
                self.fail(
                    f"tables[{i}].source", f"{t.source} is already configured in tables[{seen[t.source]}]"
                )
                continue  # (its targets would only repeat the news)
            seen[t.source] = i
            if t.staleness != "timestamp" and not t.version_column:
                self.fail(
                    f"tables[{i}].version_column",
                    f'staleness = "{t.staleness}" needs version_column = "<a column of {t.source}>"',
                )
            elif t.staleness == "timestamp" and t.version_column:
                self.fail(
                    f"tables[{i}].version_column",
                    'is only used with staleness = "version" or "hybrid" (staleness is "timestamp")',
                )
            elif t.version_column and _masked(cfg, t.masking, t.version_column):
                self.fail(
                    f"tables[{i}].version_column",
                    f'"{t.version_column}" is masked: its masked values cannot order versions',
                )
            for j, d in enumerate(t.destinations):
                if d not in cfg.destinations:
                    self.fail(
                        f"tables[{i}].destinations[{j}]", f'unknown destination "{d}"; configured: {names}'
                    )
                    continue
                if d in t.destinations[:j]:
                    self.fail(f"tables[{i}].destinations[{j}]", f'destination "{d}" is listed twice')
                    continue
                target = (d, f"{t.target_schema}.{t.target_table}")
                if target in targets:
                    self.fail(
                        f"tables[{i}].target",
                        f"{target[1]} in destination {d} is already the target of tables[{targets[target]}]",
                    )
                else:
                    targets[target] = i
            self.check_columns(cfg, i, t)

    def check_columns(self, cfg: Config, i: int, t: TableConfig) -> None:
        """Column rules: regexes compile, min <= max, type overrides name a destination of the
        table and a plain type; ignored columns have no rules."""
        for name, rules in t.columns.items():
            path = join_key(f"tables[{i}].columns", name)
            if rules.pattern is not None:
                try:
                    re.compile(rules.pattern)
                except re.error as exc:
                    self.fail(f"{path}.pattern", f"not a regular expression: {exc}")
            if rules.min is not None and rules.max is not None and rules.min > rules.max:
                self.fail(f"{path}.min", f"min {rules.min} is above max {rules.max}")
            if name in t.ignore_columns:
                self.fail(path, f"column {name} is in ignore_columns: it has no rules to check")
            for dest, text in rules.types.items():
                key = join_key(f"{path}.types", dest)
                if dest not in t.destinations:
                    self.fail(
                        key, f'"{dest}" is not a destination of {t.source}: {", ".join(t.destinations)}'
                    )
                elif not _TYPE_TEXT.fullmatch(text.strip()) or any(x in text for x in (";", "--", "/*", "`")):
                    self.fail(
                        key,
                        f'expected a column type such as "numeric(12,2)" or "Decimal(18, 2)", got "{text}"',
                    )


# A column type override: a name with optional (arguments) such as numeric(12,2), varchar(50),
# Decimal(18, 2), LowCardinality(String), Enum8('a' = 1, 'b' = 2).
_TYPE_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9_ ]*(\((?:[A-Za-z0-9_ ,.'=()-])*\))?(\[\])?")


def _masked(cfg: Config, table_masking: Any, column: str) -> bool:
    """Whether a table's masking or a [[masking.rules]] pattern masks ``column``."""
    if column in table_masking:
        return str(getattr(table_masking[column], "strategy", table_masking[column])) != "passthrough"
    for rule in cfg.masking.rules:
        try:
            if re.search(rule.pattern, column):
                return str(rule.strategy) != "passthrough"
        except re.error:
            return False  # reported by the masking checks
    return False


def _password_in(value: str) -> str:
    """Where ``value`` (a DSN or URL) holds a password: "URL" (``user:pw@``), "URL query"
    (``?password=``), "DSN" (libpq ``password=``); "" when it holds none."""
    try:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme and parts.password is not None:
            return "URL"
        if parts.scheme and parts.query:
            keys = {k.lower() for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
            if keys & _QUERY_PASSWORDS:
                return "URL query"
    except ValueError:
        pass
    if "://" not in value and _KEYWORD_PASSWORD.search(value):
        return "DSN"
    return ""


def _field_type(sec: Any, name: str) -> Any:
    return next(f.type for f in msgspec.structs.fields(sec) if f.name == name)

"""Where each dependency is, as operators read it: ``host:port`` (and database), never a password.

``cdcd check-config`` prints these before connecting (a missing ``[source]`` or ``[state]``
section silently means localhost: the printout shows it), and connection errors name them.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from cdcd.config.model import ClickHouseDestination, Config, SourceConfig, StateConfig

__all__ = [
    "DEFAULT_SCYLLA_PORT",
    "clickhouse_endpoint",
    "endpoints",
    "postgres_endpoint",
    "redis_endpoint",
    "scylla_endpoint",
]

DEFAULT_SCYLLA_PORT = 9042


def _host_port(host: str, port: int | str | None) -> str:
    host = host.strip()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return f"{host}:{port}" if port not in (None, "") else host


def _split_hosts(hostlist: str) -> list[tuple[str, str]]:
    """``"h1:5432,[::1]:5433,h3"`` -> [(host, port or "")]."""
    out = []
    for raw in hostlist.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            out.append((host, rest.lstrip(":")))
        else:
            host, _, port = item.partition(":")
            out.append((host, port))
    return out


def scylla_endpoint(hosts: list[str]) -> str:
    """The contact points with their port: ``"10.0.0.1:9042, 10.0.0.2:9042"``."""
    out = []
    for text in hosts:
        (host, port), *_ = _split_hosts(text) or [(text, "")]
        out.append(_host_port(host, port or DEFAULT_SCYLLA_PORT))
    return ", ".join(out)


def redis_endpoint(url: str) -> str:
    """``redis://:pw@h:6380/2`` -> ``"h:6380 db 2"``; ``rediss://`` adds ``(TLS)``; a unix
    socket URL gives its path."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "unix":
            return f"unix socket {parts.path}"
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "an unparsable Redis URL"
    db = parts.path.strip("/") or dict(urllib.parse.parse_qsl(parts.query)).get("db", "0")
    tls = " (TLS)" if parts.scheme == "rediss" else ""
    return f"{_host_port(host, port)} db {db}{tls}"


def postgres_endpoint(dsn: str) -> str:
    """``postgresql://u:pw@h:5433/db`` -> ``"h:5433/db (user u)"``; several hosts are listed;
    no host means libpq's default (``PGHOST`` or the local socket)."""
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "an unparsable DSN"
    if parts.scheme not in ("postgresql", "postgres"):
        return "a DSN that is not a postgresql:// URL"
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    query = dict(urllib.parse.parse_qsl(parts.query))
    user = urllib.parse.unquote(userinfo.partition(":")[0]) if at else query.get("user", "")
    hosts = [(urllib.parse.unquote(h), p) for h, p in _split_hosts(hostlist)]
    if not hosts and query.get("host"):
        hosts = [(h, query.get("port", "")) for h in query["host"].split(",")]
    if hosts:
        where = ", ".join(
            f"unix socket {h}" if h.startswith("/") else _host_port(h, p or query.get("port") or 5432)
            for h, p in hosts
        )
    else:
        where = "the default host (PGHOST or the local socket)"
    db = urllib.parse.unquote(parts.path.lstrip("/")) or query.get("dbname", "")
    if not db:
        text = where
    elif where.startswith(("unix socket", "the default host")):
        text = f"{where}, database {db}"
    else:
        text = f"{where}/{db}"
    return f"{text} (user {user})" if user else text


def clickhouse_endpoint(url: str, username: str | None = None) -> str:
    """``http://h:8123`` -> ``"http://h:8123 (user default)"`` (the default port filled in)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (8443 if parts.scheme == "https" else 8123)
    except ValueError:
        return "an unparsable URL"
    text = f"{parts.scheme}://{_host_port(host, port)}"
    return f"{text} (user {username})" if username else text


def _secret(value: Any) -> str:
    return str(value.get()) if value is not None and hasattr(value, "get") else ""


def endpoints(cfg: Config) -> list[tuple[str, str]]:
    """(dependency, where) of everything cdcd connects to; sections left out say "default"."""
    src_default = cfg.source.hosts == SourceConfig().hosts
    state_default = cfg.state.redis_url == StateConfig().redis_url and cfg.state.redis_url_file is None
    out = [
        ("scylla", scylla_endpoint(cfg.source.hosts) + (" (the default)" if src_default else "")),
        (
            "redis",
            redis_endpoint(cfg.state.redis_url.get()) + (" (the default)" if state_default else ""),
        ),
    ]
    for name, dest in cfg.destinations.items():
        if isinstance(dest, ClickHouseDestination):
            where = clickhouse_endpoint(dest.url, dest.username)
        else:
            where = postgres_endpoint(_secret(dest.dsn))
        out.append((f"destination {name} ({dest.kind})", where))
    return out

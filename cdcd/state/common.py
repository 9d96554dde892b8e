"""Shared plumbing of the Redis-backed stores: error mapping and key building.

Every Redis call of ``cdcd.state`` runs inside ``redis_errors(what)``, which turns redis-py
exceptions into the cdcd tree:

* ``StateUnavailable`` (retriable): connection refused/lost, timeouts, a server still loading
  its dataset, a read-only replica after failover, OOM (``maxmemory`` reached), cluster down.
  Callers retry with backoff; nothing was lost (R-42).
* ``StateError`` (not retriable): anything else (wrong key type, auth failure, script error).

Keys are ``<prefix>:<kind>:<part>:...``; every part is checked by ``key_part`` so a destination
or table name can never inject a ``:`` or glob character into another store's keys.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import redis.asyncio as aioredis
import redis.exceptions as rex

from cdcd.errors import CdcdError, ConfigError

__all__ = ["StateError", "StateUnavailable", "check_client", "check_prefix", "key_part", "redis_errors"]

_PART = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.\-:{}]{1,200}$")
_RETRIABLE_REPLIES = ("OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "BUSY")


class StateError(CdcdError):
    """A Redis operation of a state store failed in a way retrying will not fix."""


class StateUnavailable(StateError):
    """Redis is unreachable or cannot take writes right now; retry later (nothing was lost)."""

    retriable = True


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Map redis-py exceptions raised inside the block; ``what`` names the operation."""
    try:
        yield
    except rex.AuthenticationError as exc:
        raise StateError(f"{what}: Redis authentication failed: {exc}") from exc
    except (rex.ConnectionError, rex.TimeoutError, OSError, TimeoutError) as exc:
        raise StateUnavailable(f"{what}: Redis unavailable: {exc!r}") from exc
    except rex.ResponseError as exc:
        if str(exc).startswith(_RETRIABLE_REPLIES) or isinstance(exc, rex.ReadOnlyError):
            raise StateUnavailable(f"{what}: Redis refused the command for now: {exc}") from exc
        raise StateError(f"{what}: Redis error: {exc}") from exc
    except rex.RedisError as exc:
        raise StateError(f"{what}: Redis error: {exc!r}") from exc


def key_part(value: str, what: str) -> str:
    """``value`` if it is safe inside a key (letters, digits, ``_ . -``), else ConfigError."""
    if not _PART.match(value):
        raise ConfigError(f"{what} {value!r} is not usable in a Redis key (allowed: A-Z a-z 0-9 _ . -)")
    return value


def check_prefix(prefix: str) -> str:
    """The key prefix without a trailing ``:``; ConfigError if it holds unsafe characters."""
    prefix = prefix.rstrip(":")
    if not _PREFIX.match(prefix):
        raise ConfigError(f"Redis key prefix {prefix!r} is invalid (allowed: A-Z a-z 0-9 _ . - : {{ }})")
    return prefix


def check_client(client: aioredis.Redis) -> aioredis.Redis:
    """The stores keep binary values: a client created with ``decode_responses=True`` is refused."""
    if client.connection_pool.connection_kwargs.get("decode_responses"):
        raise ConfigError("the Redis client for cdcd state must not use decode_responses=True")
    return client

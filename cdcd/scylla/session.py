"""The scylla-driver ``Cluster``/``Session``, bridged into asyncio.

``ScyllaSession.connect(...)`` builds the driver objects from plain arguments. Queries run on the
driver's own I/O thread; their ``ResponseFuture`` callbacks are handed back to the event loop with
``loop.call_soon_threadsafe``, so nothing here blocks the loop except the one-off ``connect``,
``prepare`` and metadata refreshes, which run in a worker thread.

Rows come from ``dict_factory``: the keys are the real column names (``cdc$operation``, not the
``cdc_operation`` the default named-tuple factory would make, scylla-cdc.md §1.5).

Transient driver failures (no host, timeouts, unavailable replicas, overload, lost connections)
are raised as ``cdcd.errors.SourceUnavailable`` (retriable, the original exception chained);
anything else (invalid query, unauthorized...) propagates unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from cassandra import (
    ConsistencyLevel,
    CoordinationFailure,
    DriverException,
    OperationTimedOut,
    RateLimitReached,
    Timeout,
    Unavailable,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage, ServerError
from cassandra.query import PreparedStatement, SimpleStatement, Statement, dict_factory

from cdcd.errors import SourceUnavailable
from cdcd.schema import TableSchema
from cdcd.scylla.limits import ReadSlots

__all__ = ["TRANSIENT_ERRORS", "Page", "ScyllaSession", "parse_consistency", "parse_host"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    Timeout,  # ReadTimeout, WriteTimeout
    CoordinationFailure,  # ReadFailure, WriteFailure
    RateLimitReached,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    ServerError,
    ConnectionException,
    OSError,
)


def parse_host(text: str, default_port: int = 9042) -> tuple[str, int]:
    """``"h"``, ``"h:port"`` or ``"[v6]:port"`` -> (host, port). Raises ValueError naming the text."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"bad host {text!r}: missing ']'")
        rest = host[end + 1 :]
        host = host[1:end]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad host {text!r}")
            port = _port(rest[1:], text)
    elif host.count(":") == 1:
        host, p = host.split(":")
        port = _port(p, text)
    if not host:
        raise ValueError(f"bad host {text!r}: empty host name")
    return host, port


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise ValueError(f"bad host {text!r}: port must be 1..65535")
    return int(p)


def parse_consistency(name: str | int) -> int:
    """``"LOCAL_QUORUM"`` (any case) -> the driver's ConsistencyLevel value."""
    if isinstance(name, int):
        return name
    value = ConsistencyLevel.name_to_value.get(name.strip().upper())
    if value is None:
        names = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"unknown consistency level {name!r}; expected one of {names}")
    return int(value)


def _wrap(exc: BaseException, what: str) -> BaseException:
    if isinstance(exc, TRANSIENT_ERRORS):
        err = SourceUnavailable(f"{what}: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err
    return exc


class Page:
    """One page of rows and the state to fetch the next one (``None`` = last page)."""

    __slots__ = ("paging_state", "rows")

    def __init__(self, rows: list[Row], paging_state: bytes | None) -> None:
        self.rows = rows
        self.paging_state = paging_state


class ScyllaSession:
    """An asyncio face on a driver ``Session``. Create with ``await ScyllaSession.connect(...)``."""

    def __init__(self, cluster: Cluster, session: Session, *, consistency: int) -> None:
        self.cluster = cluster
        self.session = session
        self.consistency = consistency
        self._prepared: dict[str, PreparedStatement] = {}

    @classmethod
    async def connect(
        cls,
        hosts: Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        consistency: str | int = "LOCAL_QUORUM",
        request_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        local_dc: str | None = None,
        protocol_version: int = 4,
    ) -> ScyllaSession:
        """Connect to the cluster. ``hosts`` are ``"host"``/``"host:port"`` strings (one port for all:
        the driver reaches the nodes it discovers on the cluster-wide port).

        Raises ``SourceUnavailable`` when no host can be reached, ``ValueError`` for bad arguments.
        """
        if not hosts:
            raise ValueError("at least one Scylla host is required")
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        contact_points = [parse_host(h) for h in hosts]
        ports = {p for _, p in contact_points}
        if len(ports) != 1:
            # The driver reaches discovered nodes on one cluster-wide port.
            raise ValueError(f"all Scylla hosts must use the same port, got {sorted(ports)}")
        cl = parse_consistency(consistency)
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
            consistency_level=cl,
            request_timeout=request_timeout,
            row_factory=dict_factory,
        )
        cluster = Cluster(
            contact_points=[h for h, _ in contact_points],
            port=ports.pop(),
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            auth_provider=PlainTextAuthProvider(username, password) if username is not None else None,
            ssl_context=ssl_context,
            protocol_version=protocol_version,
            connect_timeout=connect_timeout,
            control_connection_timeout=connect_timeout,
        )
        try:
            session = await asyncio.to_thread(cluster.connect)
        except BaseException as exc:
            await asyncio.to_thread(cluster.shutdown)
            where = ", ".join(f"{h}:{p}" for h, p in contact_points)
            raise _wrap(exc, f"connecting to Scylla at {where}") from exc
        return cls(cluster, session, consistency=cl)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.cluster.shutdown)

    # ------------------------------------------------------------------------------------- queries
    async def prepare(self, query: str) -> PreparedStatement:
        """Prepare (once per query text; cached)."""
        stmt = self._prepared.get(query)
        if stmt is None:
            stmt = await self._blocking(lambda: self.session.prepare(query), f"preparing {query!r}")
            self._prepared[query] = stmt
        return stmt

    async def fetch_page(
        self,
        query: str | Statement | PreparedStatement,
        params: Sequence[Any] | None = None,
        *,
        fetch_size: int | None = None,
        paging_state: bytes | None = None,
        consistency: int | None = None,
    ) -> Page:
        """Run one page of a query without blocking the loop."""
        stmt = self._statement(query, params, fetch_size, consistency)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Page] = loop.create_future()
        try:
            args = params if isinstance(stmt, SimpleStatement) else None
            rf = self.session.execute_async(stmt, args, paging_state=paging_state)
        except BaseException as exc:
            raise _wrap(exc, _describe(query)) from exc

        def done(rows: Any) -> None:
            page = Page(list(rows or ()), getattr(rf, "_paging_state", None))
            loop.call_soon_threadsafe(_resolve, fut, page)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_fail, fut, exc)

        rf.add_callbacks(done, failed)
        try:
            return await fut
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise _wrap(exc, _describe(query)) from exc

    async def pages(
        self,
        query: str | Statement | PreparedStatement,
        params: Sequence[Any] | None = None,
        *,
        fetch_size: int | None = 1000,
        consistency: int | None = None,
        limiter: ReadSlots | None = None,
    ) -> AsyncIterator[list[Row]]:
        """All pages of a query. The request for the next page goes out as soon as a page
        arrives, so Scylla works on it while the caller decodes this one (one page ahead, never
        more); each request runs under ``limiter``'s caps when one is given. Closing the iterator
        early cancels the request in flight."""

        async def fetch(state: bytes | None) -> Page:
            async with limiter.page() if limiter is not None else contextlib.nullcontext():
                page = await self.fetch_page(
                    query, params, fetch_size=fetch_size, paging_state=state, consistency=consistency
                )
            if limiter is not None:
                limiter.spend(len(page.rows))
            return page

        ahead: asyncio.Task[Page] | None = asyncio.ensure_future(fetch(None))
        try:
            while ahead is not None:
                page = await ahead
                ahead = None if page.paging_state is None else asyncio.ensure_future(fetch(page.paging_state))
                yield page.rows
        finally:
            if ahead is not None:  # the caller stopped early (or a page failed)
                if not ahead.done():
                    ahead.cancel()
                elif not ahead.cancelled():
                    ahead.exception()  # retrieved: a failed prefetch nobody waits for is not an error

    async def execute(
        self,
        query: str | Statement | PreparedStatement,
        params: Sequence[Any] | None = None,
        *,
        fetch_size: int | None = 5000,
        consistency: int | None = None,
    ) -> list[Row]:
        """All rows of a query (every page). For small results: metadata, discovery."""
        out: list[Row] = []
        async for rows in self.pages(query, params, fetch_size=fetch_size, consistency=consistency):
            out.extend(rows)
        return out

    def _statement(
        self,
        query: str | Statement | PreparedStatement,
        params: Sequence[Any] | None,
        fetch_size: int | None,
        consistency: int | None,
    ) -> Statement:
        if isinstance(query, PreparedStatement):
            stmt: Statement = query.bind(list(params or ()))
        elif isinstance(query, str):
            stmt = SimpleStatement(query)
        else:
            stmt = query
        if fetch_size is not None:
            stmt.fetch_size = fetch_size
        if consistency is not None:
            stmt.consistency_level = consistency
        return stmt

    # ------------------------------------------------------------------------------------ metadata
    async def table_schema(self, keyspace: str, table: str, *, refresh: bool = False) -> TableSchema:
        """The base table's schema (with its cdc options) from cluster metadata.

        ``refresh=True`` re-reads the table (and its log table) from the server first. Raises
        ``LookupError`` naming the table when it does not exist.
        """
        if refresh:
            await self.refresh_table(keyspace, table)
        ks = self.cluster.metadata.keyspaces.get(keyspace)
        tm = ks.tables.get(table) if ks is not None else None
        if tm is None and not refresh:
            await self.refresh_table(keyspace, table)
            ks = self.cluster.metadata.keyspaces.get(keyspace)
            tm = ks.tables.get(table) if ks is not None else None
        if ks is None or tm is None:
            raise LookupError(f"table {keyspace}.{table} does not exist")
        return TableSchema.from_driver(tm, ks)

    def log_columns(self, keyspace: str, log_table: str) -> tuple[str, ...] | None:
        """Column names of a table in the current metadata (None if unknown)."""
        ks = self.cluster.metadata.keyspaces.get(keyspace)
        tm = ks.tables.get(log_table) if ks is not None else None
        return tuple(tm.columns) if tm is not None else None

    async def refresh_table(self, keyspace: str, table: str) -> None:
        """Re-read one table's (and its CDC log's) metadata."""

        def refresh() -> None:
            cluster = self.cluster
            try:
                cluster.refresh_keyspace_metadata(keyspace)
                ks = cluster.metadata.keyspaces.get(keyspace)
                if ks is None:
                    return
                for name in list(ks.user_types):
                    cluster.refresh_user_type_metadata(keyspace, name)
                for name in (table, table + "_scylla_cdc_log"):
                    cluster.refresh_table_metadata(keyspace, name)
            except DriverException as exc:  # "... metadata was not refreshed": connection trouble
                raise SourceUnavailable(f"refreshing metadata of {keyspace}.{table}: {exc}") from exc

        await self._blocking(refresh, f"refreshing metadata of {keyspace}.{table}")

    async def _blocking(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await asyncio.to_thread(fn)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _wrap(exc, what) from exc


def _describe(query: Any) -> str:
    text = getattr(query, "query_string", query)
    return f"query {str(text)[:200]!r}"


def _resolve(fut: asyncio.Future[Page], page: Page) -> None:
    if not fut.done():
        fut.set_result(page)


def _fail(fut: asyncio.Future[Page], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)

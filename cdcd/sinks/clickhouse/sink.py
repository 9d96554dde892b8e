"""ClickHouse destination (R-11): full rows into ReplacingMergeTree, deduplicated retries.

Per ``write()``:

1. every event is converted to ClickHouse values (fold.prepare): bad values are ``BadRows``
   before anything is read or written. A batch of full-row INSERTs of distinct keys (the bulk
   case) becomes columns directly (fold.bulk_columns / fresh_columns) and skips 2-3;
2. the newest stored version of every row the batch touches (delete markers included; whole
   partitions for partition/range deletes) is read back with server-side parameters, except keys
   held by the optional row cache (cache.py, ``row_cache_rows``) and keys whose first event is a
   full-row INSERT newer than anything stored for its CDC stream ("blind", ``_seen``: it can be
   neither stale nor a replay, and ReplacingMergeTree keeps the newest version anyway). A bulk
   batch of such INSERTs (or whose older keys the read-back does not find) is inserted as
   converted, without 3;
3. the batch is applied in memory on those rows (fold.BatchState: version guard per the table's
   ``staleness`` strategy, partial updates, exact collection deltas, deletes), giving ONE full row
   per touched key and, per skipped event, ``duplicate`` or ``stale`` with the row's write time
   (``WriteOutcome.skipped``; cdcd.sinks.outcome). With a version column, a row kept by its
   higher version gets ``_cdc_version`` = the replaced row's + 1 when its own write time is not
   later (ReplacingMergeTree keeps the greatest ``_cdc_version``);
4. one Native, column-oriented insert per physical table (main, ``<table>_static``,
   ``<table>_history``), each with an ``insert_deduplication_token`` derived from the batch's CDC
   positions, so a batch retried after a crash is not stored twice;
5. once they all succeeded, the positions the batch completes (``Applied``) are inserted into the
   offsets table under the batch's token (``offsets.py``): never ahead of the data, never twice.

``SELECT .. FINAL`` then shows the source state (``WHERE _cdc_deleted = 0`` for soft deletes).
Errors: network, timeouts, overload -> ``SinkUnavailable``; bad data (client- or server-side) ->
bisection against a ``Null``-engine twin of the table (nothing is stored) -> ``BadRows``.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect

from cdcd.config.endpoints import clickhouse_endpoint
from cdcd.errors import (
    MANAGED_COMMENT,
    BadRows,
    ConfigError,
    SchemaMismatch,
    SinkUnavailable,
    UnmanagedTable,
    client_certificate_hint,
    reason,
)
from cdcd.events import ChangeEvent, Op, Position
from cdcd.ops.logging import scrub
from cdcd.schema import CqlType, TableSchema
from cdcd.sinks import Skipped, TableMapping, WriteOutcome, config_secret
from cdcd.sinks.clickhouse.cache import RowCache
from cdcd.sinks.clickhouse.classify import Action, classify, error_code
from cdcd.sinks.clickhouse.convert import conversion as ch_conversion
from cdcd.sinks.clickhouse.fold import (
    BatchState,
    Prepared,
    TableCodec,
    blind_keys,
    bulk_columns,
    fresh_columns,
    prepare,
)
from cdcd.sinks.clickhouse.offsets import COLUMNS as OFFSETS_COLUMNS
from cdcd.sinks.clickhouse.offsets import ChOffsets
from cdcd.sinks.clickhouse.sql import (
    DELETED_AT,
    VERSION,
    ChLayout,
    history_columns,
    history_ddl,
    ident,
    layouts_for,
    read_sql,
    table_ddl,
)
from cdcd.sinks.clickhouse.wire import Block, batch_token, error_reason, key_param, micros_to_dt, norm_type
from cdcd.sinks.offsets import Applied, PerMapping, offsets_location
from cdcd.sinks.outcome import check_version_column, version_column
from cdcd.sinks.postgres.types import JSON_ENCODER, json_value
from cdcd.stages.targets import CH_COLUMNS_SQL, TargetTable, ch_column, table_from_rows

__all__ = ["ClickHouseSink"]

_READ_FORMATS = {"Tuple": "tuple"}  # Strings: str, or bytes for blob columns (codec.read_formats)
_MAX_KEYS_PER_READ = 5000


class _Table:
    """Everything the sink knows about one mapping."""

    def __init__(self, mapping: TableMapping, schema: TableSchema, cache_rows: int = 0) -> None:
        self.mapping = mapping
        self.schema = schema
        try:
            self.main, self.static = layouts_for(schema, mapping.target_schema, mapping.target_table)
        except ValueError as exc:
            raise SchemaMismatch(f"{mapping.source} -> {mapping.target}: {exc}") from exc
        self.codec = TableCodec(schema, self.main, self.static)
        self.main_types = self.main.column_types()
        self.static_types = self.static.column_types() if self.static else {}
        self.history = f"{ident(mapping.target_schema)}.{ident(mapping.target_table + '_history')}"
        self.history_types = history_columns(schema.primary_key, len(schema.partition_key))
        self.cache = RowCache(cache_rows) if cache_rows > 0 else None
        self.seen: dict[bytes, int] | None = None  # see ClickHouseSink._seen
        # part ("main"/"static") -> column -> (the user's column type, to it, back from it):
        # columns of a user-created table whose type differs from cdcd's (convert.py)
        self.adapt: dict[str, dict[str, tuple[str, Any, Any]]] = {}


class ClickHouseSink:
    """``[destinations.<name>] type = "clickhouse"``. Config attributes read (with defaults):
    ``url``, ``username``, ``password`` (Secret) or ``password_file``, ``verify_tls``, ``ca_file``,
    ``connect_timeout``, ``send_receive_timeout``, ``create_tables`` (True), ``row_cache_rows`` (0 =
    no row cache; see cache.py for when it is safe)."""

    kind = "clickhouse"

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config
        self._client: Any = None
        self._tables: dict[tuple[str, str], _Table] = {}
        self._offsets_of = PerMapping(  # per mapping: its offsets table
            lambda m: ChOffsets(self.name, self.config, m.source, m.target_schema)
        )
        self._ddl_lock = asyncio.Lock()  # ensure_table of several tables at once: one at a time
        self._connect_lock = asyncio.Lock()  # one client, however many callers connect at once

    # -- lifecycle ---------------------------------------------------------------------------
    async def connect(self) -> None:
        """Create the HTTP client once (concurrent callers, e.g. /readyz and a supervisor, share
        it). Raises ``SinkUnavailable`` when ClickHouse cannot be reached."""
        if self._client is not None:
            return
        async with self._connect_lock:
            if self._client is None:
                await self._connect()

    async def _connect(self) -> None:
        url = urlsplit(str(getattr(self.config, "url", "http://127.0.0.1:8123")))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                f"url must be http(s)://host:port, got {url.scheme!r}", key=f"destinations.{self.name}.url"
            )
        secure = url.scheme == "https"
        kwargs: dict[str, Any] = {
            "host": url.hostname,
            "port": url.port or (8443 if secure else 8123),
            "username": str(getattr(self.config, "username", "default")),
            "password": config_secret(self.config, "password") or "",
            "secure": secure,
            "verify": bool(getattr(self.config, "verify_tls", True)),
            "connect_timeout": float(getattr(self.config, "connect_timeout", 10.0)),
            "send_receive_timeout": float(getattr(self.config, "send_receive_timeout", 300.0)),
            "autogenerate_session_id": False,
        }
        ca = getattr(self.config, "ca_file", None)
        if ca:
            kwargs["ca_cert"] = str(ca)
        cert, key = getattr(self.config, "cert_file", None), getattr(self.config, "key_file", None)
        if secure and cert and key:
            # With a password the certificate only opens the TLS connection and the user logs in
            # with the password ("strict"); without one ClickHouse authenticates the user by the
            # certificate ("mutual": the user must be created IDENTIFIED WITH ssl_certificate).
            mode = "strict" if kwargs["password"] else "mutual"
            kwargs |= {"client_cert": str(cert), "client_cert_key": str(key), "tls_mode": mode}
        try:
            _without_dataframes()
            self._client = await clickhouse_connect.get_async_client(**kwargs)
        except Exception as exc:
            if classify(exc) is Action.RETRY:
                raise self._unavailable(exc, "cannot connect to") from exc
            raise

    def _unavailable(self, exc: BaseException, doing: str = "") -> SinkUnavailable:
        """``SinkUnavailable`` naming the destination, its endpoint and user (never the password)
        and what the server or the network said."""
        url = str(getattr(self.config, "url", "http://127.0.0.1:8123"))
        where = clickhouse_endpoint(url, str(getattr(self.config, "username", "default")))
        what = f"{doing} ClickHouse" if doing else "ClickHouse"
        said = reason(exc)
        if url.startswith("https:") and not getattr(self.config, "cert_file", None):
            said += client_certificate_hint(said, f"destinations.{self.name}")
        return SinkUnavailable(scrub(f"{self.name}: {what} at {where}: {said}"))

    async def healthcheck(self) -> None:
        await self.connect()
        try:
            await self._call(lambda c: c.command("SELECT 1"))
        except SinkUnavailable as exc:
            raise self._unavailable(exc.__cause__ or exc) from exc.__cause__ or exc

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 10)

    async def _call(self, fn: Any) -> Any:
        """Run ``fn(client)``; network trouble and overload become SinkUnavailable."""
        if self._client is None:
            await self.connect()
        try:
            return await fn(self._client)
        except (SinkUnavailable, BadRows, SchemaMismatch):
            raise
        except Exception as exc:
            if classify(exc) is Action.RETRY:
                raise SinkUnavailable(f"{self.name}: {type(exc).__name__}: {exc}") from exc
            raise

    async def missing_grants(self, mappings: Sequence[TableMapping]) -> list[str]:
        """The GRANT statements this user lacks for ``mappings`` (``cdcd check-config``), found
        with ``CHECK GRANT`` (docs/permissions.md lists what cdcd needs and why)."""
        user = str(await self._call(lambda c: c.command("SELECT currentUser()")))
        out: list[str] = []
        create = bool(getattr(self.config, "create_tables", True))
        creates: dict[str, bool] = {}  # database -> whether cdcd creates tables there
        for m in mappings:
            for database in (m.target_schema, offsets_location(self.config, m.target_schema)[0]):
                creates[database] = creates.get(database, False) or m.create
        for database, creates_there in creates.items():
            wanted = ["SELECT", "INSERT", "DROP TABLE"]
            if create and creates_there:
                wanted += ["CREATE TABLE", "ALTER ADD COLUMN"]
                exists = await self._call(
                    lambda c, d=database: c.command(
                        "SELECT count() FROM system.databases WHERE name = {d:String}", parameters={"d": d}
                    )
                )
                if not int(exists):
                    wanted.insert(0, "CREATE DATABASE")
            lacking = []
            for privilege in wanted:
                held = await self._call(
                    lambda c, p=privilege, d=database: c.command(f"CHECK GRANT {p} ON {ident(d)}.*")
                )
                if str(held).strip() != "1":
                    lacking.append(privilege)
            if lacking:
                out.append(f"GRANT {', '.join(lacking)} ON {ident(database)}.* TO {ident(user)}")
        return out

    # -- tables ------------------------------------------------------------------------------
    async def ensure_table(self, mapping: TableMapping, schema: TableSchema) -> None:
        async with self._ddl_lock:
            await self._ensure_table(mapping, schema)

    async def _ensure_table(self, mapping: TableMapping, schema: TableSchema) -> None:
        check_version_column(mapping, schema)
        table = _Table(mapping, schema, int(getattr(self.config, "row_cache_rows", 0) or 0))
        create = mapping.create and bool(getattr(self.config, "create_tables", True))
        ddl_settings = await self._ddl_settings(table) if create else None
        if create:
            await self._ddl(f"CREATE DATABASE IF NOT EXISTS {ident(mapping.target_schema)}")
        book = create if mapping.bookkeeping is None else mapping.bookkeeping
        for part, layout in (("main", table.main), ("static", table.static)):
            if layout is not None:
                managed = await self._managed(layout.database, layout.table)
                if create and managed is None:
                    ddl = table_ddl(layout, mapping.column_types) + f" COMMENT '{MANAGED_COMMENT}'"
                    await self._ddl(ddl, ddl_settings)
                    managed = await self._managed(layout.database, layout.table)
                adapt = await self._check(
                    layout.database, layout.table, layout.column_types(), create, ddl_settings,
                    cql=table.codec.types, bookkeeping=book, source=mapping.source, managed=bool(managed),
                )  # fmt: skip
                if adapt:
                    table.adapt[part] = adapt
        if mapping.delete == "tombstone":
            name = mapping.target_table + "_history"
            if create:
                await self._ddl(
                    history_ddl(
                        mapping.target_schema,
                        mapping.target_table,
                        schema.primary_key,
                        len(schema.partition_key),
                    )
                )
            await self._check(mapping.target_schema, name, table.history_types, create, ddl_settings)
        offsets = self._offsets_of(mapping)
        own = create or book  # cdcd's own bookkeeping table: created like the bookkeeping columns
        if own:
            await self._ddl(f"CREATE DATABASE IF NOT EXISTS {ident(offsets.database)}")
            await self._ddl(offsets.ddl)
        try:
            await self._check(offsets.database, offsets.table, OFFSETS_COLUMNS, own)
        except SchemaMismatch as exc:
            if "does not exist" not in str(exc):
                raise
            raise SchemaMismatch(
                f"offsets table {offsets.database}.{offsets.table} does not exist and this destination may not "
                f"create it (create_tables and add_bookkeeping_columns off); create it with: {offsets.ddl}"
            ) from None
        self._tables[(mapping.source, mapping.target)] = table

    # -- applied positions (cdcd.sinks.offsets) -----------------------------------------------
    async def load_applied(
        self, mapping: TableMapping, generation: int, streams: Sequence[bytes]
    ) -> dict[bytes, Position]:
        """Positions recorded for these streams of ``generation`` (absent: none recorded)."""
        offsets = self._offsets_of(mapping)
        params = offsets.params(generation, list(streams))
        res = await self._call(lambda c: c.query(offsets.select, parameters=params))
        return offsets.positions(res.result_rows, generation)

    async def record_applied(self, mapping: TableMapping, applied: Applied, token: str | None = None) -> None:
        """Insert positions (alone, or after a batch's data under its ``token``)."""
        if not applied.positions:
            return
        offsets = self._offsets_of(mapping)
        base = token or f"cdcd:{mapping.source}:{mapping.target}:positions"
        await self._insert(offsets.block(applied), offsets.token(base, applied))

    async def applied_start(self, mapping: TableMapping) -> int | None:
        """Start floor recorded with the newest generation of the mapping's source (None: none)."""
        offsets = self._offsets_of(mapping)
        res = await self._call(lambda c: c.query(offsets.select_start, parameters=offsets.params()))
        return int(res.result_rows[0][0]) if res.result_rows else None

    async def _ddl(self, sql: str, settings: dict[str, Any] | None = None) -> None:
        """Run a ``CREATE .. IF NOT EXISTS``; losing a creation race (another replica created it
        first: TABLE_ALREADY_EXISTS 57, DATABASE_ALREADY_EXISTS 82) is success."""
        try:
            await self._call(lambda c: c.command(sql, settings=settings))
        except SinkUnavailable:
            raise
        except Exception as exc:
            if error_code(exc) not in (57, 82):
                raise

    async def _ddl_settings(self, table: _Table) -> dict[str, Any] | None:
        """Query settings the DDL needs: ``Nullable(Tuple(..))`` columns (tuple, UDT, duration) are
        beta in ClickHouse 25.x/26.x behind ``enable_nullable_tuple_type`` (on by default in 26.9).
        Servers without the setting cannot store them: SchemaMismatch naming the columns."""
        types = {**table.main_types, **table.static_types}
        nullable_tuples = [n for n, t in types.items() if t.startswith("Nullable(Tuple(")]
        if not nullable_tuples:
            return None
        names = ("enable_nullable_tuple_type", "allow_experimental_nullable_tuple_type")
        res = await self._call(
            lambda c: c.query(
                "SELECT name FROM system.settings WHERE name IN {names:Array(String)}",
                parameters={"names": list(names)},
            )
        )
        have = {str(r[0]) for r in res.result_rows}
        for name in names:
            if name in have:
                return {name: 1}
        raise SchemaMismatch(
            f"{table.mapping.source} -> {table.mapping.target}: column(s) {nullable_tuples} need "
            "Nullable(Tuple(...)), which this ClickHouse server does not support (needs a server with "
            "the enable_nullable_tuple_type setting)"
        )

    async def _managed(self, database: str, name: str) -> bool | None:
        """Was the table created by cdcd (its comment)? None when it does not exist."""
        res = await self._call(
            lambda c: c.query(
                "SELECT comment FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                parameters={"db": database, "t": name},
            )
        )
        return str(res.result_rows[0][0]) == MANAGED_COMMENT if res.result_rows else None

    async def _check(
        self,
        database: str,
        name: str,
        want: dict[str, str],
        create: bool,
        settings: dict[str, Any] | None = None,
        *,
        cql: Mapping[str, CqlType] | None = None,
        bookkeeping: bool | None = None,
        source: str = "",
        managed: bool = True,
    ) -> dict[str, tuple[str, Any, Any]]:
        """The table exists and holds every column with the expected type (missing ones are added
        when ``create``, source columns only to a table cdcd created: ``managed``, else
        ``UnmanagedTable``); raises SchemaMismatch otherwise. Source columns (``cql``) of another
        type are accepted where ``convert.conversion`` allows it (returned: column -> (type, to,
        back)). A source column without target column is refused unless ``create``; missing
        bookkeeping columns are added when ``bookkeeping`` (default ``create``), else refused
        with the ALTER TABLE statements to run."""
        cql = cql or {}
        res = await self._call(
            lambda c: c.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": database, "t": name},
            )
        )
        have = {str(n): str(t) for n, t in res.result_rows}
        where = f"{database}.{name}"
        if not have:
            raise SchemaMismatch(f"ClickHouse table {where} does not exist and create_tables is off")
        add_book = create if bookkeeping is None else bookkeeping
        missing_book: list[str] = []
        adapt: dict[str, tuple[str, Any, Any]] = {}
        wrong: list[str] = []
        for col, typ in want.items():
            got = have.get(col)
            if got is None:
                sql = (
                    f"ALTER TABLE {ident(database)}.{ident(name)} ADD COLUMN IF NOT EXISTS {ident(col)} {typ}"
                )
                if col in cql:
                    if not create:
                        raise SchemaMismatch(
                            f"source column {source or '?'}.{col} has no column in ClickHouse table {where} "
                            "(create_tables is off): add it, or list it in the table's ignore_columns"
                        )
                    if not managed:
                        raise UnmanagedTable(
                            f"source column {source or '?'}.{col} has no column in ClickHouse table {where}, "
                            "a table cdcd did not create (it adds columns only to its own tables): add it, "
                            "or list it in the table's ignore_columns"
                        )
                    await self._call(lambda c, sql=sql: c.command(sql, settings=settings))
                elif create and not cql:
                    await self._call(lambda c, sql=sql: c.command(sql, settings=settings))
                else:
                    missing_book.append(sql)
            elif norm_type(got) != norm_type(typ):
                conv = ch_conversion(cql[col], got) if col in cql else None
                if conv is None:
                    wrong.append(f"ClickHouse column {where}.{col} is {got}, expected {typ}")
                else:
                    adapt[col] = (got, *conv)
        if wrong:
            raise SchemaMismatch("; ".join(wrong) + " (docs/type-map-clickhouse.md lists the accepted types)")
        if missing_book:
            if not add_book:
                raise SchemaMismatch(
                    f"ClickHouse table {where} lacks cdcd's bookkeeping columns and this destination may "
                    "not add them (add_bookkeeping_columns = false); run: " + "; ".join(missing_book) + ";"
                )
            for sql in missing_book:
                await self._call(lambda c, sql=sql: c.command(sql, settings=settings))
        return adapt

    # -- write -------------------------------------------------------------------------------
    async def write(
        self, mapping: TableMapping, events: Sequence[ChangeEvent], applied: Applied | None = None
    ) -> WriteOutcome:
        table = self._tables.get((mapping.source, mapping.target))
        if table is None:
            raise SchemaMismatch(f"{self.name}: ensure_table was not called for {mapping.source}")
        if not events:
            if applied is not None:
                await self.record_applied(mapping, applied)
            return WriteOutcome(applied=0)
        codec = table.codec
        version = version_column(mapping)
        state = BatchState(codec, mapping.delete, staleness=mapping.staleness, version=version)
        # Plain bulk INSERTs are converted column by column; they skip the fold only when none of
        # their keys is stored yet (the guard then has nothing to compare with).
        fresh = bulk_columns(codec, events) if version is None else None
        prepared: list[Prepared] = []
        if fresh is None:
            prepared, bad = prepare(codec, events)
            if bad:
                raise BadRows(bad)
            fresh = fresh_columns(codec, prepared) if version is None else None
        read = False
        seen = await self._seen(table) if version is None else None
        if fresh is not None:
            assert seen is not None
            # Only events that may be older than their row need a read-back (see ``_seen``).
            old = [i for i, e in enumerate(events) if e.write_time_us <= seen.get(e.pos.stream_id, seen[b""])]
            if old:
                keys = list(zip(*(fresh[n] for n in table.main.key_names), strict=True))
                read = True
                if await self._load_keys(table, [keys[i] for i in old], state):
                    fresh = None  # some rows exist: fold on them (the others are new: blind)
                    gone = set(old)
                    state.blind = {codec.hkey(k) for i, k in enumerate(keys) if i not in gone}
                    if not prepared:
                        prepared, bad = prepare(codec, events)
                        if bad:
                            raise BadRows(bad)
        skipped: list[Skipped] = []
        if fresh is not None:  # full-row INSERTs of new distinct keys: nothing to fold
            data = [fresh[n] for n in table.main_types]
            owners = [[i] for i in range(len(events))]
            blocks = [Block("main", table.main.name, table.main_types, data, owners)]
            done = len(events)
        else:
            if not read:
                if seen is not None:
                    state.blind = _blind(codec, prepared, seen)
                await self._read_back(table, prepared, state)
            for p in prepared:
                state.apply(p)
            blocks = self._blocks(table, state, events)
            done, skipped = state.applied, state.skipped_events()
        token = batch_token(mapping, events)
        try:
            for block in blocks:
                # One token per (batch, table), not per block shape: the retry of a batch whose
                # answer was lost folds against the rows it already stored, so its blocks can be
                # smaller (read-back keys are now stale, blind keys come again); they hold nothing
                # the first insert did not store, and ClickHouse must drop them.
                await self._insert(block, f"{token}:{block.part}", adapt=table.adapt.get(block.part))
        except BaseException as exc:
            if table.cache is not None:
                table.cache.clear()  # what is stored now is unknown
            if isinstance(exc, SinkUnavailable | SchemaMismatch) or not isinstance(exc, Exception):
                raise
            if not isinstance(exc, _WireValue) and classify(exc) is not Action.BAD_DATA:
                raise
            raise BadRows(await self._find_bad(table, blocks, exc)) from exc
        if table.cache is not None:
            _remember(table, blocks)  # what is stored now, whether or not the offsets insert works
        if seen is not None:
            floor = seen[b""]  # a stream's entry, once there, is above the floor
            for e in events:
                if e.write_time_us > seen.get(e.pos.stream_id, floor):
                    seen[e.pos.stream_id] = e.write_time_us
        if applied is not None:  # only after every data block is stored: never ahead of the data
            await self.record_applied(mapping, applied, token)
        return WriteOutcome(applied=done, skipped_stale=len(skipped), skipped=tuple(skipped))

    async def target_definition(self, mapping: TableMapping) -> TargetTable:
        """The main target table as ClickHouse defines it (``system.columns``), for the validator."""
        db, name = mapping.target_schema, mapping.target_table
        res = await self._call(lambda c: c.query(CH_COLUMNS_SQL, parameters={"db": db, "t": name}))
        cols = [ch_column(str(n), str(t), str(k)) for n, t, k in res.result_rows]
        return table_from_rows(f"{db}.{name}", cols)

    def forget(self, mapping: TableMapping | None = None) -> None:
        """Drop cached rows (``row_cache_rows``) of one mapping or of all: call it when another
        writer may have written the table's keys (a stream group's lease was reassigned)."""
        for (source, target), table in self._tables.items():
            if mapping is None or (source, target) == (mapping.source, mapping.target):
                table.seen = None  # another writer may have stored newer rows
                if table.cache is not None:
                    table.cache.clear()

    async def _seen(self, table: _Table) -> dict[bytes, int]:
        """Per CDC stream, the newest write time this sink stored for it; under ``b""`` the newest
        ``_cdc_version`` the table held when this sink first wrote to it.

        A stored row can only be as new as an event of the stream its key belongs to (a stream's
        log is in write-time order; a new generation starts after the old one's last write), so a
        full-row INSERT newer than both cannot be stale or a replay: it is written without reading
        its row back ("blind": ReplacingMergeTree keeps the newest version anyway). Older events
        (a replay after a restart, a resubmission) are read back and reported per event."""
        if table.seen is None:
            res = await self._call(lambda c: c.query(f"SELECT max({VERSION}) FROM {table.main.name}"))
            table.seen = {b"": int(res.result_rows[0][0] or 0) if res.result_rows else 0}
        return table.seen

    async def _load_keys(self, table: _Table, keys: list[tuple[Any, ...]], state: BatchState) -> bool:
        """Load the stored rows (newest versions) of these main-table keys into ``state``; True
        when any exists."""
        codec = table.codec
        wanted = {codec.hkey(k): k for k in keys}
        found = False
        if table.cache is not None:
            hits = _cached(table.cache, False, wanted)
            if hits:
                state.load_records(False, table.main, hits)
                found = True
        rest = list(wanted.values())
        for i in range(0, len(rest), _MAX_KEYS_PER_READ):
            rows = await self._select(table.main, codec.read_formats, rest[i : i + _MAX_KEYS_PER_READ], [])
            if rows:
                state.load(False, table.main, rows)
                found = True
        return found

    async def _read_back(self, table: _Table, prepared: list[Prepared], state: BatchState) -> None:
        """Load the newest stored version of every row (and wide-deleted partition) into ``state``."""
        codec = table.codec
        wants: dict[bool, tuple[dict[Any, tuple[Any, ...]], dict[Any, tuple[Any, ...]]]] = {
            False: ({}, {}),
            True: ({}, {}),
        }
        for p in prepared:
            if p.ev.op in (Op.PARTITION_DELETE, Op.RANGE_DELETE):
                wants[False][1][codec.hkey(p.key)] = p.key
                if p.ev.op == Op.PARTITION_DELETE and table.static is not None:
                    wants[True][0][codec.hkey(p.key)] = p.key
            elif p.ev.static or codec.hkey(p.key) not in state.blind:
                wants[p.ev.static][0][codec.hkey(p.key)] = p.key
        for static, layout in ((False, table.main), (True, table.static)):
            if layout is None:
                continue
            if table.cache is not None and wants[static][0]:
                hits = _cached(table.cache, static, wants[static][0])
                if hits:
                    state.load_records(static, layout, hits)
            keys, parts = (list(d.values()) for d in wants[static])
            while keys or parts:
                chunk_k, keys = keys[:_MAX_KEYS_PER_READ], keys[_MAX_KEYS_PER_READ:]
                chunk_p, parts = parts[:_MAX_KEYS_PER_READ], parts[_MAX_KEYS_PER_READ:]
                rows = await self._select(layout, codec.read_formats, chunk_k, chunk_p)
                adapt = table.adapt.get("static" if static else "main")
                if adapt:
                    rows = _back(layout.all_columns(), rows, adapt)
                state.load(static, layout, rows)

    async def _select(
        self,
        layout: ChLayout,
        read_formats: dict[str, str],
        keys: list[tuple[Any, ...]],
        parts: list[tuple[Any, ...]],
    ) -> Any:
        sql = read_sql(layout, bool(keys), bool(parts))
        params: dict[str, Any] = {}
        types = layout.key_types()
        if keys:
            params["keys"] = key_param(keys, types)
        if parts:
            params["parts"] = key_param(parts, types[: layout.partition_width])
        names = layout.all_columns()
        formats = {c: f for c, f in read_formats.items() if c in names}
        res = await self._call(
            lambda c: c.query(sql, parameters=params, query_formats=_READ_FORMATS, column_formats=formats)
        )
        return res.result_rows

    def _blocks(self, table: _Table, state: BatchState, events: Sequence[ChangeEvent]) -> list[Block]:
        blocks = []
        for part, static, layout in (("main", False, table.main), ("static", True, table.static)):
            if layout is None:
                continue
            out = state.output(static)
            if not out:
                continue
            records = []
            for _, rec in out:
                rec[DELETED_AT] = micros_to_dt(rec[DELETED_AT])
                records.append(rec)
            types = table.static_types if static else table.main_types
            blocks.append(
                Block.from_records(part, layout.name, types, records, [row.events for row, _ in out])
            )
        if table.mapping.delete == "tombstone":
            hist = self._history(table, state, events)
            if hist is not None:
                blocks.append(hist)
        return blocks

    def _history(self, table: _Table, state: BatchState, events: Sequence[ChangeEvent]) -> Block | None:
        codec = table.codec
        keys = [c.name for c in table.schema.primary_key]
        width = len(table.schema.partition_key)
        records: list[dict[str, Any]] = []
        owners: list[list[int]] = []
        for i, ev in enumerate(events):
            if ev.op not in (Op.ROW_DELETE, Op.PARTITION_DELETE, Op.RANGE_DELETE) or ev.static:
                continue
            rec: dict[str, Any] = {
                "_cdc_stream_id": ev.pos.stream_id,
                "_cdc_time": ev.pos.time,
                "_cdc_batch_seq": ev.batch_seq,
                "_cdc_op": ev.op.name.lower(),
                "_cdc_write_time": ev.write_time_us,
                DELETED_AT: micros_to_dt(ev.write_time_us),
            }
            for j, k in enumerate(keys):
                if k in ev.key:
                    rec[k] = codec.key_conv[k](ev.key[k])
                else:
                    rec[k] = codec.empty[k] if j >= width else None
            rng = None
            if ev.range is not None:
                r = ev.range
                rng = JSON_ENCODER.encode(
                    json_value(
                        {"start": list(r.start), "start_inclusive": r.start_inclusive,
                         "end": list(r.end), "end_inclusive": r.end_inclusive}
                    )
                ).decode()  # fmt: skip
            rec["_cdc_range"] = rng
            records.append(rec)
            owners.append([i])
        if not records:
            return None
        return Block.from_records("history", table.history, table.history_types, records, owners)

    async def _insert(
        self,
        block: Block,
        token: str | None,
        rows: Sequence[int] | None = None,
        adapt: Mapping[str, tuple[str, Any, Any]] | None = None,
    ) -> None:
        settings = {"insert_deduplication_token": token} if token else None
        data, types = block.columns(rows), block.types
        if adapt:
            data, types = list(data), list(types)
            for i, n in enumerate(block.names):
                if n in adapt:
                    types[i], to, _ = adapt[n]
                    try:
                        data[i] = [to(v) for v in data[i]]
                    except (ValueError, TypeError, decimal.InvalidOperation) as exc:
                        raise _WireValue(f"column {n} ({types[i]}): {exc}") from exc
        await self._call(
            lambda c: c.insert(
                block.table,
                data,
                column_names=block.names,
                column_type_names=types,
                column_oriented=True,
                settings=settings,
            )
        )

    # -- bad rows ----------------------------------------------------------------------------
    async def _find_bad(self, table: _Table, blocks: list[Block], exc: BaseException) -> dict[int, str]:
        """Bisect every block against a ``Null``-engine twin (stores nothing) to name the events
        whose rows ClickHouse refuses."""
        found: dict[int, str] = {}
        for block in blocks:
            probe = block.table[:-1] + f"_cdcd_probe_{uuid.uuid4().hex[:8]}`"  # one per bisection
            await self._call(
                lambda c, b=block, p=probe: c.command(
                    f"CREATE TABLE IF NOT EXISTS {p} AS {b.table} ENGINE = Null"
                )
            )
            try:
                types = dict(zip(block.names, block.types, strict=True))
                probe_block = Block(block.part, probe, types, block.data, block.events)
                adapt = table.adapt.get(block.part)
                bad = await self._bisect(probe_block, list(range(block.nrows)), exc, adapt)
                for row, reason in bad.items():
                    for i in block.events[row]:
                        found.setdefault(i, reason)
            finally:
                await self._call(lambda c, p=probe: c.command(f"DROP TABLE IF EXISTS {p}"))
        return found or {0: f"{type(exc).__name__}: {exc}"}

    async def _bisect(
        self,
        block: Block,
        rows: list[int],
        exc: BaseException,
        adapt: Mapping[str, tuple[str, Any, Any]] | None = None,
    ) -> dict[int, str]:
        try:
            await self._insert(block, None, rows, adapt)
            return {}
        except (SinkUnavailable, SchemaMismatch):
            raise
        except Exception as err:
            if not isinstance(err, _WireValue) and classify(err) is not Action.BAD_DATA:
                raise
            if len(rows) == 1:
                return {rows[0]: str(err) if isinstance(err, _WireValue) else error_reason(err)}
        half = len(rows) // 2
        out = await self._bisect(block, rows[:half], exc, adapt)
        out.update(await self._bisect(block, rows[half:], exc, adapt))
        return out


class _WireValue(ValueError):
    """A value cannot be converted into the type of a user-created column (bad data)."""


def _back(
    names: Sequence[str], rows: Sequence[Sequence[Any]], adapt: Mapping[str, tuple[str, Any, Any]]
) -> list[Any]:
    """Read-back rows with the values of converted columns back in the sink's value space."""
    idx = [(i, adapt[n][2]) for i, n in enumerate(names) if n in adapt]
    out = []
    for row in rows:
        r = list(row)
        for i, back in idx:
            r[i] = back(r[i])
        out.append(tuple(r))
    return out


def _without_dataframes() -> None:
    """Tell clickhouse-connect that pandas is absent unless something already loaded it there.

    On the first insert it asks ``options.pd`` whether the data is a DataFrame, which imports
    pandas when it is installed (it is in the dev environment, for chDB): 0.6 CPU-s and ~97 MiB
    of RSS for a module cdcd never uses (it inserts plain columns and reads ``result_rows``)."""
    from clickhouse_connect.driver import options

    if "pd" not in vars(options):
        options.pd = None
        options.pd_time_test = None


def _blind(codec: TableCodec, prepared: list[Prepared], seen: dict[bytes, int]) -> set[Any]:
    """``blind_keys`` whose first event is newer than anything stored for its stream."""
    blind = blind_keys(codec, prepared)
    if not blind:
        return blind
    floor = seen[b""]
    first: set[Any] = set()
    for p in prepared:
        hk = codec.hkey(p.key) if not p.ev.static else None
        if hk is None or hk in first:
            continue
        first.add(hk)
        if hk in blind and p.ev.write_time_us <= seen.get(p.ev.pos.stream_id, floor):
            blind.discard(hk)
    return blind


def _cached(cache: RowCache, static: bool, wanted: dict[Any, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Cached records of the wanted keys; the keys found are removed from ``wanted``."""
    hits = []
    for hk in list(wanted):
        rec = cache.get(static, hk)
        if rec is not None:
            hits.append(rec)
            del wanted[hk]
    return hits


def _remember(table: _Table, blocks: list[Block]) -> None:
    """Cache the rows just inserted (main and static tables) as the stored state of their keys."""
    cache = table.cache
    assert cache is not None
    codec = table.codec
    for block in blocks:
        if block.part not in ("main", "static"):
            continue
        static = block.part == "static"
        layout = table.static if static else table.main
        assert layout is not None
        records = block.records
        if records is None:
            records = [dict(zip(block.names, r, strict=True)) for r in zip(*block.data, strict=True)]
        key_names = layout.key_names
        for rec in records:
            cache.put(static, codec.hkey(tuple([rec[k] for k in key_names])), rec)

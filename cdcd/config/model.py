"""The Structs of ``cdcd.toml``: closed (unknown keys are errors), frozen, a comment per field.
``cdcd.toml.example`` repeats every comment for operators; keep the two in step."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from cdcd.config.values import Consistency, Duration, Identifier, PosInt, Secret, SourceTable, TargetTable

__all__ = [
    "BatchConfig",
    "BreakerConfig",
    "ClickHouseDestination",
    "ColumnMask",
    "ColumnRules",
    "Config",
    "Destination",
    "HttpConfig",
    "HypertableConfig",
    "InstanceConfig",
    "LoggingConfig",
    "MaskRule",
    "MaskingConfig",
    "PipelineConfig",
    "PostgresDestination",
    "RetryConfig",
    "SourceConfig",
    "StalenessConfig",
    "StateConfig",
    "TableConfig",
    "TimescaleDestination",
    "TlsConfig",
    "TracingConfig",
    "ValidationConfig",
]


# ---------------------------------------------------------------------------------------- sections
class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every section: closed (unknown keys are errors), immutable."""

    # Secret fields that must be given (directly or through ``<name>_file``).
    required_secrets: ClassVar[tuple[str, ...]] = ()


class TlsConfig(_Section, frozen=True, kw_only=True):
    """TLS to a server. Off unless ``enabled``; the system trust store unless ``ca_file``."""

    enabled: bool = False  # use TLS for this connection
    ca_file: str | None = None  # PEM bundle of CAs to trust (default: the system store)
    cert_file: str | None = None  # client certificate (PEM) for mutual TLS
    key_file: str | None = None  # its private key (PEM)
    verify_hostname: bool = True  # check the server name against its certificate


class SourceConfig(_Section, frozen=True, kw_only=True):
    """The Scylla cluster whose CDC log tables are read."""

    hosts: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["127.0.0.1:9042"]
    )  # contact points, "host" or "host:port" (one port for the whole cluster)
    username: str | None = None  # CQL user (PasswordAuthenticator); needs a password
    password: Secret | None = None  # "${SCYLLA_PASSWORD}"; or password_file
    password_file: str | None = None  # file holding the password (trailing newline ignored)
    local_dc: str | None = None  # prefer this datacenter (default: the driver's choice)
    consistency: Consistency = "LOCAL_QUORUM"  # consistency level of CDC log reads
    confidence_window: Duration = Duration(2.0)  # never read log rows newer than now - this
    poll_interval: Duration = Duration(0.25)  # pause between windows once caught up
    window: Duration = Duration(30.0)  # first read window while behind
    max_window: Duration = Duration(900.0)  # catch-up windows double up to this
    generation_poll: Duration = Duration(15.0)  # how often an open generation looks for its successor
    fetch_size: PosInt = 1000  # rows per page of a log query
    request_timeout: Duration = Duration(30.0)  # per-query timeout
    connect_timeout: Duration = Duration(10.0)  # connection (and control connection) timeout
    tablet_group_size: PosInt = 8  # streams per reader for tablet keyspaces
    # log queries (pages) in flight at once per replica, catch-up readers included; 0 = no cap
    max_concurrent_reads: Annotated[int, msgspec.Meta(ge=0)] = 8
    # log rows read per second per replica on average, catch-up readers included; 0 = no cap
    max_read_rate: Annotated[int, msgspec.Meta(ge=0)] = 0
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)  # TLS to Scylla
    # how often each table's schema is checked against the server (a missed change is found
    # within this; also the TTL of the schema cache in Redis); 1s..60s
    schema_check_interval: Duration = Duration(30.0)

    def __post_init__(self) -> None:
        if not 1.0 <= self.schema_check_interval <= 60.0:
            raise ValueError(
                f'schema_check_interval must be between "1s" and "60s", got "{self.schema_check_interval}"'
            )


class StateConfig(_Section, frozen=True, kw_only=True):
    """Redis: checkpoints, the dead-letter store, the replicas' leases and heartbeats."""

    redis_url: Secret = Secret("redis://127.0.0.1:6379/0")  # redis:// or rediss:// (TLS) URL
    redis_url_file: str | None = None  # file holding the URL (use it when the URL has a password)
    key_prefix: str = "cdcd"  # every key starts with "<prefix>:"; use "{name}" in Redis Cluster
    checkpoint_interval: Duration = Duration(10.0)  # save positions at least this often
    checkpoint_every: PosInt = 1000  # ...or after this many applied events, whichever is first
    connect_timeout: Duration = Duration(5.0)  # Redis connect/command timeout
    ca_file: str | None = None  # CA bundle for rediss:// (default: the system store)
    cert_file: str | None = None  # client certificate (PEM) for rediss:// with mutual TLS
    key_file: str | None = None  # its private key (PEM); give both or neither
    # lease on each (table, stream group): replicas share the groups (renewed every third of it; a
    # dead replica's groups are taken over after it; work stops before it can expire). 3s..10m
    lease_ttl: Duration = Duration(10.0)


class HttpConfig(_Section, frozen=True, kw_only=True):
    """The operator HTTP endpoint: /status, /healthz, /readyz, /metrics, /admin/*."""

    enabled: bool = True  # serve HTTP at all
    listen: str = "127.0.0.1:8088"  # "host:port" to bind ("0.0.0.0:8088" for all interfaces)
    admin_token: Secret | None = None  # bearer token for /admin/* ("${CDCD_ADMIN_TOKEN}"); unset: disabled
    admin_token_file: str | None = None  # file holding the admin token


class BatchConfig(_Section, frozen=True, kw_only=True):
    """When a writer batch is flushed: whichever limit is reached first."""

    max_rows: PosInt = 1000  # change events per batch
    max_bytes: PosInt = 8 * 1024 * 1024  # encoded size per batch
    max_wait: Duration = Duration(0.5)  # a non-empty batch waits at most this long for more


class RetryConfig(_Section, frozen=True, kw_only=True):
    """Backoff of failed writes: exponential with full jitter (R-40)."""

    initial: Duration = Duration(1.0)  # first wait (upper bound)
    max: Duration = Duration(60.0)  # longest wait
    multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0  # growth per attempt
    max_attempts: PosInt = 10  # attempts of a failing row before it goes to the dead-letter store


class BreakerConfig(_Section, frozen=True, kw_only=True):
    """Circuit breaker per destination (R-40)."""

    failure_threshold: PosInt = 5  # consecutive failures that open it
    reset_timeout: Duration = Duration(30.0)  # open -> half-open (one trial write) after this


class PipelineConfig(_Section, frozen=True, kw_only=True):
    """Per stream group one shared reader; per destination a branch: stages -> queue -> write -> checkpoint."""

    queue_size: PosInt = 16  # batches buffered per destination branch (then the reader waits)
    max_in_flight: PosInt = 10_000  # events read but not yet resolved (watermark cap)
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)  # default batching of all sinks
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)  # write retries
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)  # per-destination breaker
    shutdown_timeout: Duration = Duration(30.0)  # SIGTERM: drain and checkpoint within this, then exit
    # a destination whose queue stays full this long while another one waits for input detaches
    # from the shared reader and catches up on a reader of its own, then rejoins
    detach_after: Duration = Duration(2.0)
    # warn when a destination's time until data loss (CDC log TTL - lag) drops below this (at most
    # half the table's TTL); "0" turns the warning off (the metric, and the error logged once the
    # lag passes the TTL, stay)
    data_loss_warning: Duration = Duration(6 * 3600.0)


class LoggingConfig(_Section, frozen=True, kw_only=True):
    """Logs go to stderr (journald under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = "info"  # lowest level written
    format: Literal["json", "console"] = "json"  # json lines or human-readable
    # one INFO line per table and destination this often while running: state, lag, events/s
    # since the previous line (cdcd.ops.progress); "0" = off
    progress_interval: Duration = Duration(60.0)


class TracingConfig(_Section, frozen=True, kw_only=True):
    """OpenTelemetry spans for read -> write (R-62)."""

    enabled: bool = False  # create spans at all
    exporter: Literal["none", "console", "otlp"] = "none"  # where finished spans go
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"  # OTLP transport
    # OTLP receiver: "http://host:4318" (http/protobuf; /v1/traces is added) or "http://host:4317" (grpc);
    # empty: the OpenTelemetry default for the protocol
    endpoint: str = ""
    headers: dict[str, Secret] = {}  # sent with every export, e.g. authorization = "${OTLP_TOKEN}"
    timeout: Duration = Duration(10.0)  # per export request
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0  # share of traces kept
    service_name: str = "cdcd"  # service.name resource attribute


class ValidationConfig(_Section, frozen=True, kw_only=True):
    """The validation queue, the dead-letter queue and the staleness audit (cdcd.stages.validate)."""

    # warn (log, and the cdcd_rejected_share_alert metric) when the share of a table's events a
    # destination rejected over the last 5 minutes passes this (0..1)
    alert_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    # entries per destination and queue; once a queue holds this many, the branch that wants to add
    # to it pauses in state "queue-full" (error log) until entries are retried or dropped; nothing is
    # dropped (the batch being recorded when the limit is reached may overshoot it)
    max_entries: PosInt = 100_000


class InstanceConfig(_Section, frozen=True, kw_only=True):
    """This replica."""

    replica: str = ""  # name in logs and metrics (default: the host name)


# ------------------------------------------------------------------------------------ destinations
class _Destination(_Section, frozen=True, kw_only=True, tag_field="type"):
    kind: ClassVar[str]

    create_tables: bool = True  # create missing target tables (else they must exist)
    batch_max_rows: PosInt | None = None  # override pipeline.batch.max_rows for this destination
    batch_max_wait: Duration | None = None  # override pipeline.batch.max_wait for this destination
    # table where the destination records the positions it applied, with the data (cdcd.sinks.offsets)
    offsets_table: Identifier = "cdcd_offsets"
    offsets_schema: Identifier | None = None  # its schema / ClickHouse database (default: each table's)
    # add cdcd's bookkeeping columns (_cdc_write_time, _cdc_batch_seq, ...) to an existing table
    # that lacks them; unset: only when create_tables. false: refuse to start, printing the exact
    # ALTER TABLE statements to run
    add_bookkeeping_columns: bool | None = None

    def batch(self, default: BatchConfig) -> BatchConfig:
        """The batch policy of this destination: its overrides on top of ``pipeline.batch``."""
        return msgspec.structs.replace(
            default,
            max_rows=self.batch_max_rows or default.max_rows,
            max_wait=default.max_wait if self.batch_max_wait is None else self.batch_max_wait,
        )


class PostgresDestination(_Destination, frozen=True, kw_only=True, tag="postgres"):
    """PostgreSQL: COPY into staging, then INSERT .. ON CONFLICT with a version guard (R-10)."""

    kind: ClassVar[str] = "postgres"
    required_secrets: ClassVar[tuple[str, ...]] = ("dsn",)

    dsn: Secret | None = None  # "${PG_DSN}" (libpq URL; sslmode=verify-full for TLS); or dsn_file
    dsn_file: str | None = None  # file holding the DSN
    pool_size: PosInt = 4  # connections in the pool
    connect_timeout: Duration = Duration(10.0)  # connect timeout
    command_timeout: Duration = Duration(60.0)  # per-statement timeout


class HypertableConfig(_Section, frozen=True, kw_only=True):
    """TimescaleDB options of one table (R-12)."""

    time_column: Identifier  # the hypertable's time column (a timestamp column of the table)
    chunk_interval: Duration = Duration(7 * 86400.0)  # chunk_time_interval
    compress_after: Duration | None = None  # add a compression policy for chunks older than this
    retention: Duration | None = None  # drop chunks older than this


class TimescaleDestination(PostgresDestination, frozen=True, kw_only=True, tag="timescaledb"):
    """TimescaleDB: the PostgreSQL sink plus hypertables for the listed tables."""

    kind: ClassVar[str] = "timescaledb"

    hypertables: dict[SourceTable, HypertableConfig] = {}  # source "ks.table" -> hypertable options


class ClickHouseDestination(_Destination, frozen=True, kw_only=True, tag="clickhouse"):
    """ClickHouse over HTTP: ReplacingMergeTree tables, deduplicated retries (R-11)."""

    kind: ClassVar[str] = "clickhouse"

    url: str = "http://127.0.0.1:8123"  # http:// or https:// endpoint
    username: str = "default"  # ClickHouse user
    password: Secret | None = None  # "${CH_PASSWORD}"; or password_file
    password_file: str | None = None  # file holding the password
    verify_tls: bool = True  # verify the https certificate
    ca_file: str | None = None  # CA bundle for https (default: the system store)
    cert_file: str | None = None  # client certificate (PEM) for https with mutual TLS
    key_file: str | None = None  # its private key (PEM); give both or neither
    connect_timeout: Duration = Duration(10.0)  # connect timeout
    send_receive_timeout: Duration = Duration(300.0)  # per-request timeout
    # rows per table kept in memory after writing them, so hot keys' partial changes skip the
    # read-back query (cdcd.sinks.ch_cache); 0 = off. Only sound while cdcd is the table's only writer
    row_cache_rows: Annotated[int, msgspec.Meta(ge=0)] = 0


Destination = PostgresDestination | TimescaleDestination | ClickHouseDestination


# ---------------------------------------------------------------------------- masking, staleness
MaskStrategy = Literal["hash", "tokenize", "redact", "keep_last", "passthrough"]
# a data class label ("pii", "phi", ...): letters, digits, _ and -
DataClass = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class ColumnMask(_Section, frozen=True, kw_only=True):
    """How one column (or ``col.field``) is masked, with options (cdcd.masking.plan)."""

    strategy: MaskStrategy  # hash | tokenize | redact | keep_last | passthrough
    class_: DataClass = msgspec.field(default="pii", name="class")  # data class, e.g. "pii", "phi"
    keep: PosInt = 4  # keep_last: characters kept at the end
    value: str = "[REDACTED]"  # redact: the fixed text written instead
    null: bool = False  # redact: write null instead of ``value``


class MaskRule(ColumnMask, frozen=True, kw_only=True):
    """Masks every column whose name matches ``pattern``, in every table, also columns added later."""

    pattern: str  # Python regular expression searched in the column name, e.g. "(?i)^(e_?mail|ssn)$"


class MaskingConfig(_Section, frozen=True, kw_only=True):
    """PII/PHI masking before anything leaves cdcd (R-21). Keys are 32 random bytes as 64 hex
    characters, from the environment or a file, never written in this file."""

    hash_key: Secret | None = None  # "${CDCD_HASH_KEY}": HMAC-SHA-256 key of strategy hash
    hash_key_file: str | None = None  # file holding the hash key
    vault_key: Secret | None = None  # "${CDCD_VAULT_KEY}": AES-256-GCM key of the token vault
    vault_key_file: str | None = None  # file holding the vault key
    vault_dsn: Secret | None = None  # "${CDCD_VAULT_DSN}": PostgreSQL database of the token vault
    vault_dsn_file: str | None = None  # file holding the vault DSN
    vault_table: TargetTable = "cdcd_vault.tokens"  # "schema.table" of the vault (created when missing)
    rules: list[MaskRule] = []  # [[masking.rules]], by column name in every table; first match wins


class StalenessConfig(_Section, frozen=True, kw_only=True):
    """Events too old to apply (R-22): rejected to the staleness audit, never applied."""

    enabled: bool = True  # false: no max_age check (as ``cdcd run --backfill``)
    # an event written longer ago than this when it is read is too_old; "0" = off
    max_age: Duration = Duration(7 * 86400.0)
    audit_retention: Duration = Duration(7 * 86400.0)  # staleness audit entries are kept this long


class ColumnRules(_Section, frozen=True, kw_only=True):
    """Rules and type overrides of one source column (``[tables.columns.<name>]``)."""

    not_null: bool = False  # refuse nulls (and deleted cells)
    max_length: PosInt | None = None  # refuse text/blob longer than this (characters/bytes)
    pattern: str | None = None  # refuse text the whole of which does not match this regex
    min: float | None = None  # refuse numbers below this
    max: float | None = None  # refuse numbers above this
    allowed: list[str | int | float | bool] | None = None  # refuse values not in this list
    # destination name -> the column type cdcd uses when it creates the table or the column,
    # e.g. { pg = "numeric(12,2)", ch = "Decimal(18, 2)" } (docs/type-map*.md lists what converts)
    types: dict[str, str] = {}


class TableConfig(_Section, frozen=True, kw_only=True):
    """One replicated table."""

    source: SourceTable  # "keyspace.table" in Scylla (CDC enabled)
    destinations: Annotated[list[str], msgspec.Meta(min_length=1)]  # names under [destinations]
    delete: Literal["hard", "soft", "tombstone"] = "hard"  # delete strategy
    target: TargetTable | None = None  # "schema.table" in the destinations (default: the source name)
    # what a schema change of the source table does (cdcd.schema_watch): "propagate" adds new
    # columns to destination tables cdcd created, "log" leaves them out, "halt" stops the table
    schema_changes: Literal["propagate", "log", "halt"] = "propagate"
    # column (or "col.field") -> strategy name or { strategy = ..., class = ..., ... }; wins over rules
    masking: dict[str, MaskStrategy | ColumnMask] = {}
    # version guard: "timestamp" (CQL write time), "version" (version_column: a lower
    # version is stale), "hybrid" (version, then write time on ties)
    staleness: Literal["timestamp", "version", "hybrid"] = "timestamp"
    version_column: str | None = None  # required by "version" and "hybrid"
    # a refused change: "skip" holds back only that change; "quarantine_key" also holds back the
    # later changes of its primary key (validation queue, rule "quarantine") until it is resolved
    on_invalid: Literal["skip", "quarantine_key"] = "skip"
    ignore_columns: list[Identifier] = []  # source columns not replicated (no target column needed)
    columns: dict[Identifier, ColumnRules] = {}  # per-column rules and type overrides
    # "initial": copy the table's existing rows into its destinations the first time it is
    # replicated (``cdcd snapshot``), while streaming goes on; "never": only stream changes
    snapshot: Literal["initial", "never"] = "never"
    # compare the table with each destination this often and log and count the differences
    # (``cdcd reconcile``, without repair; within the [source] read caps); "0" = never
    reconcile_every: Duration = Duration(0.0)

    @property
    def keyspace(self) -> str:
        return self.source.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.source.split(".", 1)[1]

    @property
    def target_schema(self) -> str:
        return (self.target or self.source).split(".", 1)[0]

    @property
    def target_table(self) -> str:
        return (self.target or self.source).split(".", 1)[1]


class Config(_Section, frozen=True, kw_only=True):
    """The whole of ``cdcd.toml``."""

    source: SourceConfig = msgspec.field(default_factory=SourceConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    instance: InstanceConfig = msgspec.field(default_factory=InstanceConfig)
    masking: MaskingConfig = msgspec.field(default_factory=MaskingConfig)
    staleness: StalenessConfig = msgspec.field(default_factory=StalenessConfig)
    validation: ValidationConfig = msgspec.field(default_factory=ValidationConfig)
    destinations: Annotated[dict[str, Destination], msgspec.Meta(min_length=1)]
    tables: Annotated[list[TableConfig], msgspec.Meta(min_length=1)]

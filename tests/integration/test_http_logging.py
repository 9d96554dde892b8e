"""JSON logs (R-60): fields, correlation ids, and nothing sensitive, ever."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from cdcd.config import Secret
from cdcd.events import ChangeEvent, Op, Position
from cdcd.flow.contracts import PipelineId
from cdcd.ops import emit
from cdcd.ops.logging import configure, correlation, get_logger, scrub


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure(level="debug", fmt="json", stream=stream)
    yield stream
    configure(level="warning", fmt="json")


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_standard_fields(lines: io.StringIO) -> None:
    """Lines logged about a batch carry its correlation ids (derived from the CDC positions of
    its first and last events, the same on every replica) and the count, stdlib lines too."""
    stream = bytes.fromhex("0a" * 16)
    times = [
        uuid.UUID("11111111-2222-1333-8444-555555555555"),
        uuid.UUID("21111111-2222-1333-8444-555555555555"),
    ]
    events = [
        ChangeEvent(
            table="shop.orders",
            pos=Position(generation=1, stream_id=stream, time=t),
            batch_seq=i,
            op=Op.INSERT,
            write_time_us=1,
            key={"id": i},
        )
        for i, t in enumerate(times)
    ]
    with correlation(events, table="shop.orders"):
        get_logger("cdcd.flow.pipeline").info("batch written", destination="pg", rows=3)
        logging.getLogger("cdcd.flow.writer").warning("sink write failed, retrying: %s", "x")
    rec, std = _records(lines)
    assert rec["message"] == "batch written"
    assert rec["level"] == "info"
    assert rec["component"] == "cdcd.flow.pipeline"
    assert rec["first_event"] == f"{'0a' * 16}:{times[0]}:0"
    assert rec["last_event"] == f"{'0a' * 16}:{times[1]}:1"
    assert rec["events"] == 2
    assert rec["table"] == "shop.orders" and rec["destination"] == "pg" and rec["rows"] == 3
    assert str(rec["timestamp"]).endswith("Z")
    assert std["first_event"] == rec["first_event"] and std["events"] == 2


def test_stdlib_loggers_are_rendered_as_json_too(lines: io.StringIO) -> None:
    logging.getLogger("cdcd.scylla.reader").warning("window read failed for %s: %s", "shop.orders", "timeout")
    (rec,) = _records(lines)
    assert rec["component"] == "cdcd.scylla.reader"
    assert rec["level"] == "warning"
    assert rec["message"] == "window read failed for shop.orders: timeout"


def test_secrets_and_row_values_never_reach_the_log(lines: io.StringIO) -> None:
    log = get_logger("cdcd.test")
    event = ChangeEvent(
        table="shop.orders",
        pos=Position(generation=1, stream_id=b"\1" * 16, time=uuid.uuid1()),
        batch_seq=0,
        op=Op.UPDATE,
        write_time_us=1,
        key={"id": 7},
        values={"ssn": "078-05-1120"},
    )
    log.info(
        "something happened",
        password="hunter2",
        token=Secret("tok-xyz"),
        dsn="postgresql://u:pg-pass@h/db",
        values={"ssn": "078-05-1120"},
        change=event,
        error=ConnectionError("could not connect to postgresql://app:pg-pass@db:5432/x"),
        detail="redis://:redis-pass@cache:6379/0 refused; password=abc123",
    )
    logging.getLogger("asyncpg").error("connect failed: postgresql://app:pg-pass@db/x")
    text = lines.getvalue()
    for secret in ("hunter2", "tok-xyz", "pg-pass", "078-05-1120", "redis-pass", "abc123"):
        assert secret not in text, secret
    rec = _records(lines)[0]
    assert rec["password"] == "***" and rec["token"] == "***" and rec["dsn"] == "***"
    assert "values" not in rec
    assert rec["change"].startswith("shop.orders op=UPDATE")  # type: ignore[union-attr]
    assert "postgresql://app:***@db:5432/x" in str(rec["error"])


def test_exceptions_are_scrubbed(lines: io.StringIO) -> None:
    try:
        raise RuntimeError("failed for postgresql://u:very-secret@h/db")
    except RuntimeError:
        get_logger("cdcd.test").exception("boom")
    text = lines.getvalue()
    assert "very-secret" not in text and "RuntimeError" in text


def test_emit_logs_with_fixed_messages(lines: io.StringIO) -> None:
    pid = PipelineId(destination="pg", table="shop.orders", group="5:1")
    emit.FlowTelemetry().write_failed(pid, ConnectionError("postgresql://u:pw1@h refused"), 2, 1.5)
    emit.FlowTelemetry().dead_lettered(pid, 3)
    rec1, rec2 = _records(lines)
    assert rec1["message"] == "destination write failed; retrying" and rec1["level"] == "warning"
    assert rec1["attempt"] == 2 and rec1["group"] == "5:1" and "pw1" not in str(rec1["error"])
    assert rec2["message"] == "events moved to the dead-letter store" and rec2["level"] == "error"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        ("redis://:pw@host:6379", "redis://:***@host:6379"),
        ("host=h password=pw dbname=x", "host=h password=*** dbname=x"),
        ("http://host:8123/?x=1", "http://host:8123/?x=1"),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_spans_for_reads_and_writes() -> None:
    """With tracing on, a wrapped source starts a trace per batch (``cdcd.read`` with a
    ``cdcd.decode`` child) and a write for that batch is a child of it, with the outcome."""
    import asyncio

    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cdcd.config import TracingConfig
    from cdcd.events import EventBatch
    from cdcd.ops import tracing

    provider = tracing.configure(TracingConfig(enabled=True, exporter="none"), replica="r1")
    assert provider is not None
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        pid = PipelineId(destination="pg", table="shop.orders", group="5:1")
        event = ChangeEvent(
            table="shop.orders",
            pos=Position(generation=1, stream_id=b"\1" * 16, time=uuid.uuid1()),
            batch_seq=0,
            op=Op.INSERT,
            write_time_us=1,
            key={"id": 7},
        )

        class Outcome:
            applied = 1
            skipped_stale = 0

        async def read(start: object):  # type: ignore[no-untyped-def]
            yield EventBatch(events=[event], upto={})
            yield EventBatch(events=[], upto={})

        async def drain() -> list[EventBatch]:
            return [b async for b in tracing.traced_source(read, table="shop.orders")({})]

        batches = asyncio.run(drain())
        assert len(batches) == 2 and batches[0].trace is not None and batches[1].trace is None
        with tracing.child_span("cdcd.write", [batches[0].trace], {"rows": 1}):
            emit.FlowTelemetry().batch_written(pid, [event], Outcome(), 0.02)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert set(spans) == {"cdcd.write", "cdcd.read", "cdcd.decode"}
        read_span, write_span = spans["cdcd.read"], spans["cdcd.write"]
        assert read_span.parent is None
        assert spans["cdcd.decode"].parent.span_id == read_span.context.span_id
        assert write_span.parent.span_id == read_span.context.span_id
        assert write_span.context.trace_id == read_span.context.trace_id
        assert write_span.attributes["rows"] == 1 and write_span.attributes["applied"] == 1
        assert read_span.attributes["events"] == 1
        assert read_span.attributes["first_event"] == f"{'01' * 16}:{event.pos.time}:0"
        assert write_span.resource.attributes["service.instance.id"] == "r1"
    finally:
        tracing.shutdown()

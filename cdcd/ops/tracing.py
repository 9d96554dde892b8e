"""OpenTelemetry tracing (R-62): a tracer provider set up from ``[tracing]``.

``configure(cfg)`` installs a ``TracerProvider`` (resource ``service.name``, ratio sampler) with a
console exporter, an OTLP one (``http/protobuf`` or ``grpc``, from the OpenTelemetry exporter
packages) or none; ``tracer()`` returns cdcd's tracer (a no-op one while tracing is off,
so callers never check). Spans are cheap to create only when sampled; wrap whole batches (read,
write, commit), never single events.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

from cdcd import __version__
from cdcd.config import TracingConfig
from cdcd.ops.correlation import batch_fields

# Chain.run's per-stage callback: (stage name, start ns, end ns, passed, rejected).
StageObserver = Callable[[str, int, int, int, int], None]

__all__ = [
    "StageObserver",
    "active",
    "batch_trace",
    "child_span",
    "configure",
    "in_batch",
    "otlp_exporter",
    "record_span",
    "shutdown",
    "stage_observer",
    "traced_source",
    "tracer",
]

_provider: TracerProvider | None = None


def configure(cfg: TracingConfig, *, replica: str = "") -> TracerProvider | None:
    """Install the provider described by ``cfg`` (None when tracing is disabled)."""
    global _provider
    if not cfg.enabled:
        return None
    resource = Resource.create(
        {"service.name": cfg.service_name, "service.version": __version__, "service.instance.id": replica}
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    if cfg.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif cfg.exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(otlp_exporter(cfg)))
    _provider = provider
    return provider


def otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    """The OTLP exporter of ``[tracing]``: ``http/protobuf`` (``endpoint`` + ``/v1/traces`` unless
    it names a path) or ``grpc`` (TLS for https:// endpoints), with ``headers`` and ``timeout``."""
    headers = {name: value.get() for name, value in cfg.headers.items()}
    timeout = float(cfg.timeout)
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        endpoint = cfg.endpoint or "http://localhost:4317"
        insecure = urllib.parse.urlsplit(endpoint).scheme == "http"
        return GrpcExporter(endpoint=endpoint, insecure=insecure, headers=headers, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    endpoint = cfg.endpoint or "http://localhost:4318"
    if urllib.parse.urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint, headers=headers, timeout=timeout)


def tracer() -> trace.Tracer:
    """cdcd's tracer; a no-op tracer unless ``configure`` enabled tracing."""
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer("cdcd", __version__)


def shutdown() -> None:
    """Flush and stop the exporter (at process exit)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def record_span(name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any]) -> None:
    """A finished span for work that was timed elsewhere (nothing happens while tracing is off)."""
    if _provider is None:
        return
    span = tracer().start_span(name, start_time=start_ns, attributes=dict(attributes))
    span.end(end_time=end_ns)


def active() -> bool:
    """Whether spans are recorded (``[tracing] enabled``)."""
    return _provider is not None


# The read batch being handed on (its ``cdcd.read`` span's context): set by the shared reader and
# catch-up readers around the stages and the hand-over, read by the branch that buffers the batch.
_BATCH: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar("cdcd_batch_trace", default=None)


@contextlib.contextmanager
def in_batch(ctx: SpanContext | None) -> Iterator[None]:
    token = _BATCH.set(ctx)
    try:
        yield
    finally:
        _BATCH.reset(token)


def batch_trace() -> SpanContext | None:
    """The span context of the read batch being handed on (None outside one, or tracing off)."""
    return _BATCH.get()


def _parent(ctx: SpanContext | None) -> Context | None:
    return trace.set_span_in_context(NonRecordingSpan(ctx)) if ctx is not None else None


def stage_observer(ctx: SpanContext | None, **attributes: Any) -> StageObserver | None:
    """For ``Chain.run(observe=...)``: one ``cdcd.stage`` span per stage, a child of the read
    batch ``ctx`` (None, so ``Chain.run`` times nothing, while tracing is off)."""
    if _provider is None or ctx is None:
        return None
    parent = _parent(ctx)

    def observe(stage: str, start_ns: int, end_ns: int, passed: int, rejected: int) -> None:
        attrs = {**attributes, "stage": stage, "passed": passed, "rejected": rejected}
        span = tracer().start_span(
            f"cdcd.stage.{stage}", context=parent, start_time=start_ns, attributes=attrs
        )
        span.end(end_time=end_ns)

    return observe


@contextlib.contextmanager
def child_span(
    name: str, parents: Sequence[SpanContext | None], attributes: Mapping[str, Any]
) -> Iterator[trace.Span | None]:
    """A span for work done for one or more read batches: a child of the first batch's trace,
    linked to the others (a destination write of events read in several batches). Yields None
    (and records nothing) while tracing is off or no parent is known."""
    known = [p for p in parents if p is not None]
    if _provider is None or not known:
        yield None
        return
    first = (known[0].trace_id, known[0].span_id)
    others = {(p.trace_id, p.span_id): p for p in known[1:]}  # (SpanContext is not hashable)
    links = [Link(p) for k, p in others.items() if k != first]
    with tracer().start_as_current_span(
        name, context=_parent(known[0]), links=links, attributes=dict(attributes), record_exception=True
    ) as span:
        yield span


def traced_source(
    read: Callable[[Any], AsyncIterator[Any]], **attributes: Any
) -> Callable[[Any], AsyncIterator[Any]]:
    """Wrap a ``SourceFactory``: each non-empty batch starts a trace: a ``cdcd.read`` span (the
    time spent waiting for the batch, its events and their correlation ids) with a ``cdcd.decode``
    child; the batch carries the read span's context (``EventBatch.trace``) on to the stages, the
    destination writes and the checkpoints. Closing the wrapper closes the wrapped iterator."""
    if _provider is None:
        return read

    async def source(start: Any) -> AsyncIterator[Any]:
        it = read(start)
        try:
            while True:
                began = time.time_ns()
                try:
                    batch = await anext(it)
                except StopAsyncIteration:
                    return
                if batch.events:
                    end = time.time_ns()
                    attrs = {**attributes, **batch_fields(batch.events)}
                    span = tracer().start_span("cdcd.read", start_time=began, attributes=attrs)
                    decode = tracer().start_span(
                        "cdcd.decode",
                        context=trace.set_span_in_context(span),
                        start_time=max(began, end - int(getattr(batch, "decode_ns", 0))),
                        attributes={"events": len(batch.events)},
                    )
                    decode.end(end_time=end)
                    span.end(end_time=end)
                    batch.trace = span.get_span_context()
                yield batch
        finally:
            close = getattr(it, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    return source

"""OpenTelemetry tracing (R-62): a tracer provider set up from ``[tracing]``.

``configure(cfg)`` installs a ``TracerProvider`` (resource ``service.name``, ratio sampler) with a
console exporter, an OTLP one (``http/protobuf`` or ``grpc``, from the OpenTelemetry exporter
packages) or none; ``tracer()`` returns cdcd's tracer (a no-op one while tracing is off,
so callers never check). Spans are cheap to create only when sampled; wrap whole batches (read,
write, commit), never single events.
"""

from __future__ import annotations

import contextlib
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from cdcd import __version__
from cdcd.config import TracingConfig

__all__ = ["configure", "otlp_exporter", "record_span", "shutdown", "traced_source", "tracer"]

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


def traced_source(
    read: Callable[[Any], AsyncIterator[Any]], **attributes: Any
) -> Callable[[Any], AsyncIterator[Any]]:
    """Wrap a ``SourceFactory``: one ``cdcd.read`` span per non-empty batch (time spent waiting
    for it, events in it). Closing the wrapper closes the wrapped iterator."""
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
                    record_span(
                        "cdcd.read", began, time.time_ns(), {**attributes, "events": len(batch.events)}
                    )
                yield batch
        finally:
            close = getattr(it, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    return source

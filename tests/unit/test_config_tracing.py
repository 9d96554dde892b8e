"""``[tracing]`` OTLP keys: the exporter built from them, and clear errors for bad ones."""

from __future__ import annotations

import pytest

from cdcd.config import loads
from cdcd.errors import ConfigError
from cdcd.ops.tracing import otlp_exporter

BASE = '[destinations.pg]\ntype = "postgres"\ndsn = "postgresql://h/db"\n[[tables]]\nsource = "a.b"\ndestinations = ["pg"]\n'


def cfg(tracing: str, env: dict[str, str] | None = None) -> object:
    return loads(f"[tracing]\nenabled = true\n{tracing}\n{BASE}", env=env or {})


def test_exporters_for_both_protocols() -> None:
    """(What they send is checked end to end by tests/e2e/test_tracing_otlp_e2e.py.)"""
    c = cfg(
        'exporter = "otlp"\nendpoint = "http://collector:4318"\nheaders = { authorization = "${T}" }',
        {"T": "x"},
    )
    assert type(otlp_exporter(c.tracing)).__module__.startswith("opentelemetry.exporter.otlp.proto.http")  # type: ignore[attr-defined]
    c = cfg('exporter = "otlp"\nprotocol = "grpc"\nendpoint = "http://collector:4317"\ntimeout = "3s"')
    assert type(otlp_exporter(c.tracing)).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tracing", "key", "words"),
    [
        (
            'exporter = "otlp"\nheaders = { authorization = "Bearer literal" }',
            "tracing.headers.authorization",
            "credential",
        ),
        ('exporter = "otlp"\nendpoint = "collector:4318"', "tracing.endpoint", "http://"),
        ('exporter = "otlp"\nendpoint = "http://u:pw@collector:4318"', "tracing.endpoint", "password"),
        ('exporter = "jaeger"', "tracing.exporter", "otlp"),
        ('protocol = "thrift"', "tracing.protocol", "grpc"),
    ],
)
def test_bad_tracing_keys(tracing: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(tracing)
    text = str(info.value)
    assert key in text and words in text, text


def test_a_plain_header_may_be_literal() -> None:
    c = cfg('exporter = "otlp"\nheaders = { x-scope-orgid = "tenant-1" }')
    assert c.tracing.headers["x-scope-orgid"].get() == "tenant-1"  # type: ignore[attr-defined]

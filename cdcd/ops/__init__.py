"""Operator-facing telemetry and endpoints.

* ``metrics``: every Prometheus metric (one ``REGISTRY``), one comment each.
* ``emit``: one function per notable happening, logging and counting together;
  ``FlowTelemetry`` is the pipelines' ``FlowEvents`` hook.
* ``logging``: structlog JSON logs with secret/payload redaction and correlation ids.
* ``tracing``: OpenTelemetry tracer provider.
* ``http``: aiohttp ``/status``, ``/healthz``, ``/readyz``, ``/metrics`` and token-protected ``/admin``.
"""

from __future__ import annotations

__all__ = ["emit", "http", "logging", "metrics", "tracing"]

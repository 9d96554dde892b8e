"""``[tracing] exporter = "otlp"``: a running ``cdcd run`` sends its spans over OTLP/HTTP
(protobuf) to a receiver (tests/otlp_receiver.py), with the configured header (its value from the
environment) and the resource attributes naming the service and replica."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import ConfigOptions, TableSpec
from tests.e2e.workload import Workload
from tests.otlp_receiver import OtlpReceiver

TOKEN = "otlp-Bearer-5a1"


async def test_spans_reach_an_otlp_receiver(cql: Any, make_cdcd: MakeCdcd, pg_dsn: str) -> None:
    work = Workload(cql, "tr.t", seed=4, partitions=5, rows_per_partition=10)
    work.create()
    with OtlpReceiver() as receiver:
        tracing = (
            '\n[tracing]\nenabled = true\nexporter = "otlp"\nprotocol = "http/protobuf"\n'
            f'endpoint = "{receiver.endpoint}"\ntimeout = "5s"\n'
            'headers = { authorization = "${OTLP_AUTH}" }\n'
        )
        # [tracing] goes after the [logging] table the harness writes ("destinations" extra is last)
        options = ConfigOptions(extra={"destinations": tracing})
        cdcd = make_cdcd([TableSpec("tr.t", "dst.t")], options, env={"OTLP_AUTH": f"Bearer {TOKEN}"})
        cdcd.start()
        cdcd.wait_ready()
        await asyncio.to_thread(work.run, 300)
        await wait_converged(cql, source_schema(cql, "tr.t"), pg_dsn, "dst.t", timeout=60)
        assert cdcd.stop() == 0, cdcd.log_tail()  # shutdown flushes the exporter

        spans = receiver.spans()
        names = {s["name"] for s in spans}
        assert {"cdcd.read", "cdcd.decode", "cdcd.write", "cdcd.checkpoint"} <= names, names
        assert any(n.startswith("cdcd.stage.") for n in names), names
        reads = {(s["trace_id"], s["span_id"]): s for s in spans if s["name"] == "cdcd.read"}
        assert all(not s["parent_span_id"] for s in reads.values())  # one trace per read batch
        for s in spans:
            if s["name"] != "cdcd.read":  # decode, stages, writes, checkpoints: children of a read
                assert (s["trace_id"], s["parent_span_id"]) in reads, s
        writes = [s for s in spans if s["name"] == "cdcd.write"]
        assert sum(s["attributes"]["rows"] for s in writes) >= 300
        for w in writes:
            a = w["attributes"]
            assert a["table"] == "tr.t" and a["destination"] == "pg" and a["outcome"] == "written", a
            assert a["first_event"].count(":") == 2 and a["events"] == a["rows"], a
            for trace_id, span_id in w["links"]:  # the other read batches whose events it wrote
                assert (trace_id, span_id) in reads
        read_events = {r["attributes"]["first_event"] for r in reads.values()}
        assert any(w["attributes"]["first_event"] in read_events for w in writes)
        assert all(s["headers"]["authorization"] == f"Bearer {TOKEN}" for s in spans)
        assert spans[0]["resource"]["service.name"] == "cdcd"
        assert spans[0]["resource"]["service.instance.id"] == "e2e"
        assert TOKEN not in cdcd.log_text()

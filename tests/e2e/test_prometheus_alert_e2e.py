"""A real Prometheus (Debian's package) scrapes a real ``cdcd run`` with the rules of
deploy/prometheus/alerts.yml and fires ``CdcdReplicationLagHigh`` once the destination is stopped
while the source keeps changing.

The rule is used as it is written except for its two numbers: the threshold (2 min) and the
``for:`` time (2 min) are scaled to 3 s and 2 s, so the alert fires within seconds; everything
else (the expression's shape, labels, annotations) is what an operator deploys. Before the
destination stops, the alert is not firing and every cdcd metric the rules use is scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import _PgCluster, free_port, wait_until
from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import TableSpec
from tests.e2e.workload import Workload

ROOT = Path(__file__).resolve().parents[2]
ALERT = "CdcdReplicationLagHigh"


def scaled_rules(path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == ALERT:
                assert rule["expr"].endswith("> 120") and rule["for"] == "2m", rule
                rule["expr"] = rule["expr"].replace("> 120", "> 3")
                rule["for"] = "2s"
    path.write_text(yaml.safe_dump(doc))
    return path


class Prometheus:
    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus not found: run `bash deploy/install.sh` (Debian's prometheus package)"
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [{"job_name": "cdcd", "static_configs": [{"targets": [target]}]}],
            })
        )  # fmt: skip
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(lambda: self.get("/-/ready") is not None, 30, "prometheus")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            body = r.read()
        return json.loads(body) if path.startswith("/api/") else body

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["data"]["alerts"])

    def series_names(self) -> set[str]:
        return set(self.get("/api/v1/label/__name__/values")["data"])

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def own_pg() -> Iterator[_PgCluster]:
    cluster = _PgCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_lag_alert_fires_when_the_destination_stops(
    cql: Any, make_cdcd: MakeCdcd, own_pg: _PgCluster, tmp_path: Path
) -> None:
    work = Workload(cql, "pa.t", seed=3, partitions=10, rows_per_partition=10)
    work.create()
    cdcd = make_cdcd([TableSpec("pa.t", "dst.t")], env={"E2E_PG_DSN": own_pg.dsn})
    cdcd.start()
    cdcd.wait_ready()
    await asyncio.to_thread(work.run, 300)
    await wait_converged(cql, source_schema(cql, "pa.t"), own_pg.dsn, "dst.t", timeout=60)

    prom = Prometheus(
        Path(tempfile.mkdtemp(dir=tmp_path)), f"127.0.0.1:{cdcd.http_port}", scaled_rules(tmp_path / "r.yml")
    )
    stop_writing = threading.Event()

    def write() -> None:
        while not stop_writing.is_set():
            work.run(20, concurrency=4)
            time.sleep(0.2)

    writer = threading.Thread(target=write, daemon=True)
    try:
        wait_until(
            lambda: "cdcd_replication_lag_seconds" in prom.series_names(), 30, "the lag series scraped"
        )
        writer.start()
        await asyncio.sleep(4)
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == ALERT], prom.alerts()

        own_pg._run([own_pg.pg_ctl, "-D", str(own_pg.data), "-m", "immediate", "-w", "stop"])
        began = time.monotonic()

        def firing() -> bool:
            return any(
                a["labels"]["alertname"] == ALERT and a["state"] == "firing"
                and a["labels"]["table"] == "pa.t" and a["labels"]["destination"] == "pg"
                for a in prom.alerts()
            )  # fmt: skip

        await asyncio.to_thread(wait_until, firing, 60, f"{ALERT} firing")
        fired_after = time.monotonic() - began
        (alert,) = [a for a in prom.alerts() if a["labels"]["alertname"] == ALERT]
        assert alert["annotations"]["runbook_url"] == "docs/runbook.md#cdcdreplicationlaghigh"
        assert alert["annotations"]["summary"].startswith("cdcd: pa.t -> pg is ")
        assert alert["labels"]["severity"] == "warning"
        assert fired_after < 60
    finally:
        stop_writing.set()
        if writer.is_alive():
            writer.join(timeout=30)
        prom.stop()
        cdcd.kill9()  # its destination is down: a graceful stop would only wait out the drain

"""deploy/grafana: every panel query of the dashboard is valid PromQL (checked by promtool, as a
recording rule of a generated rules file), names only metrics cdcd exports, and uses the data
source the provisioning defines; compose.yaml mounts the provisioning and the dashboards."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.deploy.test_alerts import exported_metric_names, metric_names, promtool

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "cdcd.json").read_text())


def targets() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def test_every_query_parses(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel:query_{i}", "expr": e} for i, (_, e) in enumerate(targets())],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(targets())} rules found" in out.stdout


def test_queries_name_only_exported_metrics() -> None:
    exported = exported_metric_names()
    for title, expr in targets():
        used = metric_names(expr)
        assert used and used <= exported, (title, used - exported)


def test_panels_cover_what_operators_watch() -> None:
    used = set().union(*(metric_names(e) for _, e in targets()))
    for name in (
        "cdcd_replication_lag_seconds", "cdcd_time_until_data_loss_seconds", "cdcd_events_applied_total",
        "cdcd_replication_latency_seconds_bucket", "cdcd_errors_total", "cdcd_events_skipped_total",
        "cdcd_in_flight_events", "cdcd_dlq_size", "cdcd_pipelines", "cdcd_leases_held", "cdcd_rejected_share",
    ):  # fmt: skip
        assert name in used, name


def test_data_source_and_provisioning_agree() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"]}
    assert uids == {source["uid"]}
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cdcd.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = (ROOT / "compose.yaml").read_text()
    assert f'"./deploy/grafana/dashboards:{path}:ro"' in compose
    assert '"./deploy/grafana/provisioning:/etc/grafana/provisioning:ro"' in compose
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))

"""deploy/prometheus/alerts.yml: valid for Prometheus (``promtool check rules``), behaving as its
unit tests say (``promtool test rules``), every alert documented in docs/runbook.md, and every
metric it uses one that cdcd exports (or Prometheus's own ``up``).

promtool comes with Debian's ``prometheus`` package, which deploy/install.sh installs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from cdcd.ops import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMETHEUS_OWN = {"up"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: run `bash deploy/install.sh` (Debian's prometheus package)"
    return path


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exported_metric_names() -> set[str]:
    """Every series name cdcd's /metrics can show: the registry's families with their sample
    suffixes, and the scrape-time families of ``PipelineCollector``."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        if family.type == "info":
            names.add(family.name + "_info")
    source = (ROOT / "cdcd" / "ops" / "metrics.py").read_text()
    names.update(re.findall(r'GaugeMetricFamily\(\s*"(cdcd_\w+)"', source))
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers followed by ``{`` or standing as a
    selector, minus functions, keywords and label names."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    keywords = {"and", "or", "unless", "bool", "offset"}
    return {w for w in words if w not in keywords and not re.fullmatch(r"\d+[smhdwy]?", w)}


def test_promtool_check_rules() -> None:
    out = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_promtool_unit_tests() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", "alerts.test.yml"],
        cwd=RULES.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_tested() -> None:
    tests = yaml.safe_load((RULES.parent / "alerts.test.yml").read_text())["tests"]
    firing = {
        case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")
    }
    assert firing == {a["alert"] for a in alerts()}


def test_every_alert_has_summary_description_and_a_runbook_entry() -> None:
    text = RUNBOOK.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^## (.+)$", text, re.M)}
    for rule in alerts():
        name = rule["alert"]
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert ann["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/runbook.md has no section for {name}"
        grouped = re.search(r"\bby \(([^)]*)\)", rule["expr"])
        for label in [x.strip() for x in grouped.group(1).split(",")] if grouped else []:
            assert f"$labels.{label}" in ann["description"], (name, label)
        assert rule["labels"]["severity"] in ("warning", "critical"), name


def test_alerts_use_only_metrics_cdcd_exports() -> None:
    exported = exported_metric_names() | PROMETHEUS_OWN
    for rule in alerts():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


def test_metric_name_parser() -> None:
    expr = 'sum by (table, destination) (rate(cdcd_errors_total{stage="x"}[5m])) / up{job="cdcd"} > 6 * 3600'
    assert metric_names(expr) == {"cdcd_errors_total", "up"}

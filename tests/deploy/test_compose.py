"""compose.yaml is valid for Docker Compose itself: ``docker compose config`` (the real CLI plugin,
which deploy/install.sh builds when the machine lacks it) accepts it and resolves every service
the README names, with the mounts the stack needs. No Docker engine runs here, so nothing is
started: the README says what was run and what was not."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    docker = shutil.which("docker")
    assert docker, "docker (the client) not found"
    out = subprocess.run(
        [docker, "compose", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert "is not a docker command" not in out.stderr, "no compose plugin: run `bash deploy/install.sh`"
    return out


def test_docker_compose_config_accepts_the_stack() -> None:
    out = compose("config", "--quiet")
    assert out.returncode == 0, out.stderr
    cfg = json.loads(compose("config", "--format", "json").stdout)
    services = cfg["services"]
    assert {
        "scylla",
        "postgres",
        "timescaledb",
        "clickhouse",
        "redis",
        "cdcd",
        "prometheus",
        "grafana",
    } <= set(services)
    mounts = {
        (m["source"], m["target"])
        for s in services.values()
        for m in s.get("volumes", [])
        if m["type"] == "bind"
    }
    assert (str(ROOT / "deploy" / "prometheus"), "/etc/prometheus") in mounts
    assert (str(ROOT / "deploy" / "grafana" / "dashboards"), "/var/lib/grafana/dashboards") in mounts
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    for source, _ in mounts:
        assert Path(source).exists(), source

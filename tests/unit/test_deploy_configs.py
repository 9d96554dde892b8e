"""The configuration files shipped under deploy/ stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdcd.config import load

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(ROOT.glob("deploy/*/cdcd.toml")), ids=lambda p: p.parent.name)
def test_shipped_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "PG_DSN": "postgresql://cdcd@db/analytics", "TS_DSN": "postgresql://cdcd@ts/metrics",
        "CH_PASSWORD": "pw", "CDCD_ADMIN_TOKEN": "token", "DEMO_SCYLLA_PORT": "9042", "DEMO_REDIS_PORT": "6379",
        "DEMO_HTTP_PORT": "8088", "CDCD_HASH_KEY": "ab" * 32,
    }.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    cfg = load(path)
    assert cfg.tables and all(t.destinations for t in cfg.tables)


def test_every_file_compose_names_exists() -> None:
    """compose.yaml's bind mounts ("./x:/y") and its Dockerfile are in the repository."""
    import re

    text = (ROOT / "compose.yaml").read_text()
    mounts = re.findall(r'"\./([^":]+):', text)
    dockerfiles = re.findall(r"dockerfile:\s*([\w./-]+)", text)
    assert mounts and dockerfiles
    missing = [p for p in [*mounts, *dockerfiles] if not (ROOT / p).exists()]
    assert not missing, missing

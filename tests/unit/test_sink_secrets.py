"""``config_secret``: how a sink reads its DSN/password from a loaded config or a bare one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from cdcd.config.values import Secret
from cdcd.sinks import config_secret


def test_the_secret_wins_and_never_needs_the_file(tmp_path: Path) -> None:
    cfg = SimpleNamespace(dsn=Secret("postgresql://a"), dsn_file=str(tmp_path / "missing"))
    assert config_secret(cfg, "dsn") == "postgresql://a"


def test_the_file_is_read_without_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cr3t \r\n")
    cfg = SimpleNamespace(password=None, password_file=str(tmp_path / "pw"))
    assert config_secret(cfg, "password") == "s3cr3t "


def test_nothing_configured_is_none() -> None:
    assert config_secret(SimpleNamespace(), "password") is None
    assert config_secret(SimpleNamespace(password=None, password_file=None), "password") is None

"""deploy/install.sh puts in place everything deploy/cdcd.service names, and the unit is valid.

These run after ``bash deploy/install.sh`` (as the README and .ci/run do): a path the unit needs
that is missing is a failure naming the install script, never a skip. Only the
``systemd-analyze verify`` check is skipped, with its reason, where systemd is not installed.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "cdcd.service"
INSTALL = ROOT / "deploy" / "install.sh"
HINT = "run `bash deploy/install.sh` (as root)"
ID_PATTERN = re.compile(r"\bR-\d+|\b[Ii]ssue \d+")


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment in the unit, in order (keys may repeat)."""
    entries, section = [], ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_paths() -> dict[str, str]:
    """Every file system path the unit names -> the key naming it."""
    paths: dict[str, str] = {}
    for _, key, value in unit_entries():
        if key == "Documentation":
            for url in value.split():
                parsed = urlparse(url)
                assert parsed.scheme in ("file", "man"), f"Documentation={url}: only local documentation"
                if parsed.scheme == "file":
                    paths[parsed.path] = key
        elif key in ("EnvironmentFile", "WorkingDirectory", "ReadOnlyPaths", "ReadWritePaths", "ExecStart"):
            for word in value.split():
                path = word.lstrip("-@+!:")
                if path.startswith("/"):
                    paths[path] = key
    return paths


def test_unit_names_the_paths_install_creates() -> None:
    paths = unit_paths()
    assert {"/usr/local/bin/cdcd", "/etc/cdcd/cdcd.toml", "/etc/cdcd/cdcd.env"} <= set(paths), paths
    script = INSTALL.read_text()
    for path in paths:  # the script writes each path, or the directory that receives it
        assert path in script or str(Path(path).parent) in script, f"install.sh never creates {path}"


def test_every_path_of_the_unit_exists_after_install() -> None:
    for path, key in unit_paths().items():
        assert Path(path).exists(), f"{key}: {path} does not exist; {HINT}"
    binary = Path("/usr/local/bin/cdcd")
    assert os.access(binary, os.X_OK), f"{binary} is not executable; {HINT}"
    assert (binary.resolve().parent / "python").exists(), f"{binary} does not lead into a virtual environment"
    assert Path("/etc/systemd/system/cdcd.service").exists(), HINT


def test_service_user_and_file_modes() -> None:
    entries = {key: value for _, key, value in unit_entries()}
    try:
        user = pwd.getpwnam(entries["User"])
        group = grp.getgrnam(entries["Group"])
    except KeyError as exc:
        raise AssertionError(f"user or group {exc} missing; {HINT}") from None
    assert user.pw_gid == group.gr_gid
    assert user.pw_shell.endswith("nologin")
    # Secrets: read by systemd (as root) only.
    env = os.stat(entries["EnvironmentFile"].lstrip("-"))
    assert (env.st_uid, stat.S_IMODE(env.st_mode)) == (0, 0o600), "the secrets file must be root's, mode 0600"
    # The configuration: readable by the service's group, not by everyone.
    config = re.search(r"--config (\S+)", entries["ExecStart"])
    assert config is not None
    for path in (Path(config.group(1)), Path(config.group(1)).parent):
        st = os.stat(path)
        assert st.st_gid == group.gr_gid and st.st_mode & stat.S_IRGRP, (
            f"{path}: not readable by {group.gr_name}"
        )
        assert not st.st_mode & stat.S_IROTH, f"{path}: readable by everyone"


def test_systemd_accepts_the_unit() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(
            "systemd-analyze is not installed (Debian package systemd; deploy/install.sh installs it)"
        )
    out = subprocess.run(
        [analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    about_us = [line for line in (out.stdout + out.stderr).splitlines() if "cdcd" in line]
    assert out.returncode == 0 and not about_us, out.stdout + out.stderr


def test_scripts_parse() -> None:
    for script in [*sorted((ROOT / "deploy").glob("*.sh")), ROOT / ".ci" / "run"]:
        out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, f"{script}: {out.stderr}"


def test_ci_runs_the_readme_commands() -> None:
    """.ci/run runs the README's quick-start set-up and test commands, in that order."""
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start") :].split("\n## ", 1)[0]
    commands = [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", quick, re.S)
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert commands[:2] == ["bash deploy/install.sh", "bash deploy/demo.sh"], commands
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    setup, tests = commands[0], commands[2:]
    assert len(tests) == 1, f"one test command, got {tests}"
    assert setup in ci and tests[0] in ci and ci.index(setup) < ci.index(tests[0]), ci


def test_no_internal_ids_in_user_facing_files() -> None:
    files = [ROOT / "README.md", ROOT / "cdcd.toml.example", ROOT / "compose.yaml"]
    files += [p for d in ("deploy", "docs") for p in sorted((ROOT / d).rglob("*")) if p.is_file()]
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in files
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if ID_PATTERN.search(line)
    ]
    assert not found, "internal ids in user-facing files:\n" + "\n".join(found)

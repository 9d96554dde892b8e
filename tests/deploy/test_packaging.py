"""cdcd builds as a wheel from a clone, and that wheel alone is a working ``cdcd``.

deploy/install.sh installs cdcd (not editable) into its own virtual environment and the Dockerfile
runs ``pip install .``: both rely on the wheel holding every ``cdcd`` package and the ``cdcd``
console script, and on the dev tools being an extra rather than a requirement.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_TOOLS = {"pytest", "pytest-asyncio", "hypothesis", "ruff", "mypy", "chdb"}


def test_wheel_holds_every_package_and_the_console_script(tmp_path: Path) -> None:
    # What a clone holds for the build (the working tree's code, without caches or build output).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "cdcd", src / "cdcd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(dist)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("cdcd-*.whl")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())

    modules = {p.relative_to(src).as_posix() for p in (src / "cdcd").rglob("*.py")}
    assert modules, "no cdcd modules found"
    assert not modules - names, f"missing from the wheel: {sorted(modules - names)}"
    assert not [n for n in names if n.startswith(("tests/", "bench/", "deploy/"))], sorted(names)
    assert "[console_scripts]" in entry_points and "cdcd = cdcd.cli:main" in entry_points, entry_points

    requires = metadata.get_all("Requires-Dist") or []
    for req in requires:
        name = req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if name in DEV_TOOLS:
            assert 'extra == "dev"' in req, f"{req}: a dev tool must not be a requirement of `pip install .`"
    assert any(r.startswith("asyncpg") and "extra" not in r for r in requires), requires

    # The wheel on its own (its dependencies from this interpreter): the console script runs and
    # every module imports, from the installed copy and not from the clone.
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    version = subprocess.run(
        [str(target / "bin" / "cdcd"), "--version"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith("cdcd "), version.stdout + version.stderr
    walk = (
        "import importlib, pkgutil, cdcd\n"
        f"assert cdcd.__file__.startswith({str(target)!r}), cdcd.__file__\n"
        "for m in pkgutil.walk_packages(cdcd.__path__, 'cdcd.'):\n"
        "    if not m.name.endswith('.__main__'):\n"
        "        importlib.import_module(m.name)\n"
    )
    imported = subprocess.run(
        [sys.executable, "-c", walk],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr

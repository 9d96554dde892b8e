"""Run ScyllaDB's CQL-only CDC tests against the emulator and compare with the expected results.

    python -m tests.scylla_suite.run /path/to/scylladb/test [--venv DIR] [--python PY]
                                    [--vnodes] [--update] [--keep-output DIR]

``/path/to/scylladb/test`` is the ``test/`` folder of a ScyllaDB checkout (never committed here).
Runs ``test/cqlpy/test_cdc.py`` and ``test/cql/cdc_*.cql`` (see README.md) with ScyllaDB's own
conftest files, in a virtualenv of their own (Python >= 3.12, ``requirements.txt``; created on
first use), against ``python -m tests.scylla_emulator --port 0 --tablets`` (ScyllaDB's shipped
default: new keyspaces use tablets; ``--vnodes`` starts it without). Every test's outcome is
compared with ``expected.json``; the exit status is 0 when all match, 1 when any differs (the
differences are listed), 2 on a usage or setup error. ``--update`` writes the actual outcomes into
``expected.json`` (keeping the recorded reasons of tests whose outcome did not change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXPECTED = HERE / "expected.json"
REQUIREMENTS = HERE / "requirements.txt"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdcd" / "scylla-tests-venv"
PYTEST_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
python_files = test_*.py *_test.py *_tests.py
"""


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def find_python(explicit: str | None) -> str:
    """An interpreter >= 3.12 (ScyllaDB's test code uses 3.12 syntax)."""
    pyenv = sorted(
        Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob("versions/3.1[2-9]*/bin/python3")
    )
    candidates = (
        [explicit] if explicit else ["python3.13", "python3.12", "python3", *map(str, reversed(pyenv))]
    )
    for c in candidates:
        path = shutil.which(c) if c else None
        if path is None:
            continue
        out = subprocess.run(
            [path, "-c", "import sys; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.stdout.strip() == "True":
            return path
        if explicit:
            fail(f"--python {explicit} is older than Python 3.12 (ScyllaDB's tests need 3.12+)")
    fail("no Python >= 3.12 found (python3.13, python3.12, python3, pyenv versions); pass --python")
    raise AssertionError


def ensure_venv(venv: Path, python: str | None) -> Path:
    """The venv's python, creating the venv and installing requirements.txt when needed."""
    py = venv / "bin" / "python"
    stamp = venv / ".cdcd-requirements"
    wanted = REQUIREMENTS.read_text()
    if py.exists() and stamp.exists() and stamp.read_text() == wanted:
        return py
    if not py.exists():
        print(f"creating {venv} ...", flush=True)
        subprocess.run([find_python(python), "-m", "venv", str(venv)], check=True)
    print(f"installing {REQUIREMENTS.name} into {venv} ...", flush=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return py


def start_emulator(tablets: bool, root: Path) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "tests.scylla_emulator", "--host", "127.0.0.1", "--port", "0"]
    if tablets:
        cmd.append("--tablets")
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        fail(f"the emulator did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def test_files(test_dir: Path) -> list[str]:
    cqlpy = test_dir / "cqlpy" / "test_cdc.py"
    if not cqlpy.is_file():
        fail(f"{cqlpy} not found: give the test/ folder of a ScyllaDB checkout")
    files = [str(cqlpy.relative_to(test_dir.parent))]
    # test/pylib/cql_repl.py collects only *_test.cql (CQL_TEST_SUFFIX): cdc_with_lwt_test_full_preimage.cql
    # is not run by ScyllaDB either
    files += sorted(str(p.relative_to(test_dir.parent)) for p in (test_dir / "cql").glob("cdc_*_test.cql"))
    return files


def outcomes(junit: Path) -> dict[str, str]:
    """test id ("file::name[param]") -> passed | failed | error | skipped."""
    out: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        file = case.get("file") or cls.replace(".", "/") + ".py"  # junit_family=xunit1 names the file
        result = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                result = {"failure": "failed"}.get(child.tag, child.tag)
        key = f"{file}::{name}"
        if result == "error" and out.get(key) in ("passed", "failed"):
            continue  # a teardown error after the test's own outcome
        out[key] = result
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.scylla_suite.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("test_dir", type=Path, help="the test/ folder of a ScyllaDB checkout")
    ap.add_argument(
        "--venv", type=Path, default=DEFAULT_VENV, help=f"virtualenv for the tests (default {DEFAULT_VENV})"
    )
    ap.add_argument("--python", help="interpreter >= 3.12 used to create the venv")
    ap.add_argument("--vnodes", action="store_true", help="start the emulator without --tablets")
    ap.add_argument("--update", action="store_true", help="record the actual outcomes in expected.json")
    ap.add_argument("--keep-output", type=Path, help="keep the JUnit XML and .cql outputs here")
    ap.add_argument("--emulator-root", type=Path, default=REPO,
                    help="checkout whose tests/scylla_emulator is run (default: this one)")  # fmt: skip
    ap.add_argument(
        "-k", dest="select", help="pytest -k expression (partial runs are not compared for missing tests)"
    )
    args = ap.parse_args(argv)
    test_dir = args.test_dir.resolve()
    files = test_files(test_dir)
    py = ensure_venv(args.venv.resolve(), args.python)
    work = (
        Path(args.keep_output).resolve() if args.keep_output else Path(tempfile.mkdtemp(prefix="scylla-cdc-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    (work / "pytest.ini").write_text(PYTEST_INI)
    emulator, port = start_emulator(not args.vnodes, args.emulator_root.resolve())
    try:
        env = {**os.environ, "SCYLLA_TEST_RUNNER": "runpy",
               "PYTHONPATH": os.pathsep.join([str(test_dir.parent), str(REPO)])}  # fmt: skip
        # the test files come first: pytest finds the conftests defining --host/--port from them
        cmd = [str(py), "-m", "pytest", *files, "-c", str(work / "pytest.ini"), "--rootdir", str(test_dir.parent),
               "--confcutdir", str(test_dir.parent),
               "-p", "tests.scylla_suite.plugin", "-p", "no:cacheprovider", "--scylla-output-dir", str(work),
               "--host", "127.0.0.1", "--port", str(port), "--junitxml", str(work / "junit.xml"), "-o", "junit_family=xunit1", "-q", "-rfE",
               *(["-k", args.select] if args.select else [])]  # fmt: skip
        subprocess.run(cmd, cwd=test_dir.parent, env=env, check=False)  # failures are outcomes
    finally:
        emulator.terminate()
        emulator.wait(10)
    actual = outcomes(work / "junit.xml") if (work / "junit.xml").exists() else {}
    if not actual:
        fail(f"no test ran (see the pytest output above; files: {' '.join(files)})")
    expected = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    diffs = []
    for test in sorted(set(actual) | (set() if args.select else set(expected))):
        want = expected.get(test, {}).get("outcome", "(not recorded)")
        got = actual.get(test, "(not run)")
        if want != got:
            diffs.append((test, want, got))
    counts = Counter(actual.values())
    print(
        f"\n{len(actual)} tests: "
        + ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped") if counts[k])
    )
    if args.update:
        new = {}
        for test, got in sorted(actual.items()):
            old = expected.get(test, {})
            entry = {"outcome": got}
            if got != "passed":
                entry["reason"] = old.get("reason", "") if old.get("outcome") == got else ""
            new[test] = entry
        EXPECTED.write_text(json.dumps(new, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {EXPECTED}")
        return 0
    for test, want, got in diffs:
        print(f"DIFFERS {test}: expected {want}, got {got}")
    if not args.keep_output:
        shutil.rmtree(work, ignore_errors=True)
    print("all outcomes as expected" if not diffs else f"{len(diffs)} outcomes differ from expected.json")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())

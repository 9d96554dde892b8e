"""pytest plugin loaded into ScyllaDB's own test run (``run.py``): the two fixtures of ScyllaDB's
``test/pylib/runner.py`` that ``test/cql/conftest.py`` needs, without test.py's cluster runner
(``SCYLLA_TEST_RUNNER=runpy``). ``.cql`` files write their actual output (``<name>.reject``) into
``--scylla-output-dir``."""

from __future__ import annotations

import pathlib

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--scylla-output-dir", default=None, help="where .cql tests write their .reject output")


@pytest.fixture(scope="module")
def suite_log_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = request.config.getoption("--scylla-output-dir")
    path = pathlib.Path(out) if out else tmp_path_factory.mktemp("scylla-cql")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def testpy_uname(request: pytest.FixtureRequest) -> str:
    return pathlib.Path(str(request.node.path)).stem

"""The status page (``GET /``) of a running ``cdcd run``, loaded in headless Chromium (Debian's
package): after the page's script has polled ``/status`` a few times, the DOM shows the table and
its destination running, the lag, a lag sparkline over the polls, the events applied and a rate.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from html import unescape
from typing import Any

from tests.e2e.compare import source_schema, wait_converged
from tests.e2e.conftest import MakeCdcd
from tests.e2e.harness import TableSpec
from tests.e2e.workload import Workload

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def rendered(url: str, budget_ms: int = 7000) -> str:
    """The page's DOM after ``budget_ms`` of virtual time (its timers and polls ran)."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium not found: run `bash deploy/install.sh` (Debian's chromium package)"
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


async def test_status_page_shows_the_running_daemon(cql: Any, make_cdcd: MakeCdcd, pg_dsn: str) -> None:
    work = Workload(cql, "page.t", seed=9, partitions=5, rows_per_partition=10)
    work.create()
    cdcd = make_cdcd([TableSpec("page.t", "dst.t")])
    cdcd.start()
    cdcd.wait_ready()
    await asyncio.to_thread(work.run, 300)
    await wait_converged(cql, source_schema(cql, "page.t"), pg_dsn, "dst.t", timeout=60)

    dom = await asyncio.to_thread(rendered, f"http://127.0.0.1:{cdcd.http_port}/")
    assert "<title>cdcd status</title>" in dom
    assert "replica e2e" in dom  # the header line from /status
    row = re.search(r'<tr data-table="page\.t" data-destination="pg">(.*?)</tr>', dom, re.S)
    assert row, dom[-3000:]
    cells = row.group(1)
    assert '<span class="state ok">running</span>' in cells
    lag = re.search(r'<td class="num lag">([^<]+)</td>', cells)
    assert lag and re.fullmatch(r"[\d.]+ (s|min)", lag.group(1)), cells
    points = re.search(r'<svg class="spark"[^>]*data-points="(\d+)"', cells)
    assert points and int(points.group(1)) >= 2, cells  # several polls, one point each
    applied = re.search(r'<td class="num applied">(\d+)</td>', cells)
    assert (
        applied
        and int(applied.group(1)) == cdcd.status()["tables"]["page.t"]["destinations"]["pg"]["events_applied"]
    )
    assert re.search(r'<td class="num rate">[\d.]+</td>', cells), cells
    assert not re.search(r'<div id="error">[^<]+</div>', unescape(dom)), dom[-2000:]

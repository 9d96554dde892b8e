"""Run a module under cProfile timing the main thread's CPU time (``time.thread_time``), not wall
time: on a shared machine the wall clock also counts the time the process waited for a core, so
wall-clock profiles of the same run move with the load. Not a test.

    python bench/cpu_profile.py OUT.prof -m cdcd run --config cdcd.toml

Writes the profile to OUT.prof when the module returns or exits (SIGTERM: cdcd drains and exits).
Only the main thread (cdcd's event loop) is profiled, as with ``python -m cProfile``.
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit(__doc__)
    out, module = sys.argv[1], sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    profile = cProfile.Profile(time.thread_time)
    try:
        profile.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
    finally:
        profile.dump_stats(out)


if __name__ == "__main__":
    main()

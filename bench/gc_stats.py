"""Run a module and report the time its cyclic garbage collections took (``gc.callbacks``), per
generation, to stderr when it exits. Not a test.

    python bench/gc_stats.py [--freeze] [--threshold N] -m cdcd run --config cdcd.toml

``--freeze``: ``gc.freeze()`` once the module's imports are done (after 5 s), so full collections
no longer scan the objects of start-up (modules, classes, functions). ``--threshold N``: the
generation-0 threshold (default 700).
"""

from __future__ import annotations

import atexit
import gc
import runpy
import sys
import threading
import time

_spent = [0.0, 0.0, 0.0]
_count = [0, 0, 0]
_started: list[float] = []


def _callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started.append(time.thread_time())
    elif _started:
        g = info["generation"]
        _spent[g] += time.thread_time() - _started.pop()
        _count[g] += 1


def _report() -> None:
    total = sum(_spent)
    parts = ", ".join(f"gen{g} {_count[g]} x {_spent[g]:.2f} s" for g in range(3))
    print(f"gc_stats: {total:.2f} CPU-s in collections ({parts}); CPU total {time.process_time():.2f} s",
          file=sys.stderr, flush=True)  # fmt: skip


def main() -> None:
    args = sys.argv[1:]
    freeze = "--freeze" in args
    if freeze:
        args.remove("--freeze")
    if "--threshold" in args:
        i = args.index("--threshold")
        gc.set_threshold(int(args[i + 1]), *gc.get_threshold()[1:])
        del args[i : i + 2]
    if len(args) < 2 or args[0] != "-m":
        raise SystemExit(__doc__)
    gc.callbacks.append(_callback)
    atexit.register(_report)
    if freeze:
        threading.Timer(5.0, gc.freeze).start()
    sys.argv = [args[1], *args[2:]]
    try:
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    finally:
        _report()


if __name__ == "__main__":
    main()

"""A plain-text progress line on stderr: rows, ranges, rate and ETA.

On a terminal the line is redrawn in place (``\\r``) at most every ``interval`` seconds; otherwise
(a log file, CI) a full line is written every ``quiet_interval`` seconds, and always at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "fmt_duration"]


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressBar:
    def __init__(
        self, label: str, *, stream: TextIO | None = None, interval: float = 0.2, quiet_interval: float = 5.0
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else quiet_interval
        self._last = 0.0
        self._width = 0

    def line(
        self, *, rows: int, done: int, total: int, rate: float, eta: float | None, what: str = "rows"
    ) -> str:
        share = done / total if total else 1.0
        filled = int(share * 20)
        bar = "#" * filled + "." * (20 - filled)
        return (
            f"{self.label} [{bar}] {share:4.0%}  {rows:,} {what}  {done}/{total} ranges  "
            f"{rate:,.0f} {what}/s  ETA {fmt_duration(eta)}"
        )

    def update(self, *, final: bool = False, **fields: object) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        text = self.line(**fields)  # type: ignore[arg-type]
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

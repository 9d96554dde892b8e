"""``LoopLoad``: the CPU share of the loop thread over a window."""

from __future__ import annotations

from cdcd.flow.load import LoopLoad


def test_busy_only_when_the_thread_used_most_of_the_window() -> None:
    wall, cpu = [0.0], [0.0]
    load = LoopLoad(window=2.0, threshold=0.9, wall=lambda: wall[0], cpu=lambda: cpu[0])
    assert not load.busy()  # no window has passed yet
    wall[0], cpu[0] = 2.0, 1.9  # 95 % of the window on the CPU
    assert load.busy() and load.share() == 0.95
    wall[0], cpu[0] = 3.0, 2.0  # within the next window: the last share stands
    assert load.busy()
    wall[0], cpu[0] = 4.0, 2.4  # 0.5 s of CPU in 2 s: waiting on I/O (a destination down)
    assert not load.busy() and load.share() == 0.25

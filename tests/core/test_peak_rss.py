"""PeakRSS: the process's overall peak resident set, and a window's own (the learner's step peak)."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import pytest

from rlhf.core.resources import PeakRSS, peak_rss

MB = 2**20


def resident() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def spike(size: int) -> None:
    """Hold `size` bytes resident for a moment: anonymous pages, each touched, then unmapped (no allocator
    in between that could keep them)."""
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    block.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
def test_a_window_sees_its_own_peak_and_the_overall_peak_keeps_an_earlier_one():
    rss = PeakRSS()
    spike(300 * MB)
    before_window = peak_rss()
    rss.start_window()
    if not rss.windowed:
        pytest.skip("this kernel refuses the VmHWM reset (/proc/self/clear_refs)")
    # after the reset, the window's peak is the current resident set: the 300 MB peak is gone from it
    start = resident()
    assert rss.window() < before_window - 200 * MB
    assert abs(rss.window() - start) < 20 * MB
    assert rss.overall() >= before_window
    spike(100 * MB)
    # the window now holds the 100 MB spike, and the overall peak still the 300 MB one
    assert rss.window() >= start + 90 * MB
    assert rss.overall() >= before_window

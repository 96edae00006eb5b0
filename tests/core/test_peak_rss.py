"""PeakRSS: the process's overall peak resident set, and a window's own (the learner's step peak)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rlhf.core.processes import PeakRSS, peak_rss

MB = 2**20


def resident() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
def test_a_window_sees_its_own_peak_and_the_overall_peak_keeps_an_earlier_one():
    rss = PeakRSS()
    big = torch.ones(300 * MB // 4)  # 300 MB, touched; freed at once (an allocation this big is mmapped)
    del big
    before_window = peak_rss()
    rss.start_window()
    assert rss.window() is not None
    # after the reset, the window's peak is the current resident set: the 300 MB peak is gone from it
    start = resident()
    assert rss.window() < before_window - 200 * MB
    assert abs(rss.window() - start) < 20 * MB
    assert rss.overall() >= before_window
    small = torch.ones(100 * MB // 4)
    del small
    # the window now holds the 100 MB spike, and the overall peak still the 300 MB one
    assert rss.window() >= start + 90 * MB
    assert rss.overall() >= before_window

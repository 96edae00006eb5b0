"""This process's own resources: its peak resident memory, and its lifetime tied to its parent's."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM if its parent dies, so a killed demo leaves no servers behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def peak_rss(pid: int | str = "self") -> int:
    """A process's peak resident set in bytes: VmHWM from /proc (Linux). Not getrusage's ru_maxrss, which
    also counts the parent's pages the child held between fork and exec."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: the best there is, for this process

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakRSS:
    """This process's peak resident set, overall and within a window (one learner step): Linux lets a process
    reset its VmHWM to the current resident set (`5` written to /proc/self/clear_refs), so a window's own peak
    can be read. The overall peak is kept as the largest seen. Where the reset is refused, window() is None."""

    def __init__(self) -> None:
        self.earlier = peak_rss()
        self.windowed = False

    def start_window(self) -> None:
        self.earlier = max(self.earlier, peak_rss())
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.windowed = True
        except OSError:
            self.windowed = False

    def overall(self) -> int:
        return max(self.earlier, peak_rss())

    def window(self) -> int | None:
        return peak_rss() if self.windowed else None

"""Services as separate local processes: start `rlhf serve ...`, wait for SERVING, stop cleanly.

Used by the demo and by tests. Every process is stopped with SIGTERM (graceful shutdown), then
SIGKILL after a grace period, so none is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

RLHF_COMMAND = [sys.executable, "-m", "rlhf.cli"]


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServiceProcess:
    """`rlhf <args> --host 127.0.0.1 --port N` in a subprocess, its output in log_path."""

    def __init__(
        self,
        args: list[str],
        log_path: Path | None = None,
        env: dict | None = None,
        name: str = "",
        health_port: bool = False,
    ):
        self.args = args
        self.name = name or (args[1] if len(args) > 1 else args[0])
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        # With health_port, health is asked on its own plaintext port (--health-port), as kubelet does when
        # the main port wants TLS; otherwise on the main port.
        self.health_port = free_port() if health_port else None
        self.log_path = Path(log_path) if log_path else None
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> ServiceProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - child owns it
        self.proc = subprocess.Popen(
            [
                *RLHF_COMMAND,
                *self.args,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *(["--health-port", str(self.health_port)] if self.health_port else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        if out is not subprocess.DEVNULL:
            out.close()
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 120.0) -> None:
        from rlhf.core.client import wait_until_serving

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.health_port}" if self.health_port else self.target) as channel:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.logs()}")
                try:
                    wait_until_serving(channel, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                    return
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.name} not SERVING after {timeout:.0f}s:\n{self.logs()}") from None

    def logs(self, tail: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-tail:]
        return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful), then SIGKILL if it outlives timeout; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        try:
            return self.start()
        except BaseException:
            self.kill()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()

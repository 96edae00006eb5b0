"""Test helpers: free ports, and `rlhf serve ...` started as a real separate process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

RLHF = [sys.executable, "-m", "rlhf.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CliServer:
    """`rlhf serve <args>` in a subprocess; waits for SERVING; SIGTERM on exit."""

    def __init__(self, args: list[str], log_path: Path | None = None, env: dict | None = None):
        self.args = args
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLHF_LOG_FORMAT": "text", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> CliServer:
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*RLHF, *self.args, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, env=self.env,
        )
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 120.0) -> None:
        from rlhf.core.client import wait_until_serving

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}: {self.logs()}")
                try:
                    wait_until_serving(channel, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                    return
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise

    def logs(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path and self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> CliServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()

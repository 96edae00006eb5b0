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

from rlhf.core.resources import die_with_parent

RLHF_COMMAND = [sys.executable, "-m", "rlhf.cli"]


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
        command: list[str] | None = None,
        start_timeout: float | None = None,
    ):
        self.args = args
        self.command = command or RLHF_COMMAND  # another environment's `python -m rlhf.cli`, e.g. vLLM's
        self.start_timeout = start_timeout  # seconds `with` waits for SERVING (None: start()'s default)
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
                *self.command,
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
            return self.start() if self.start_timeout is None else self.start(self.start_timeout)
        except BaseException:
            self.kill()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()

"""Test helpers: free ports, and `rlhf serve ...` started as a real separate process."""

from __future__ import annotations

from pathlib import Path

from rlhf.toy.processes import RLHF_COMMAND, ServiceProcess, free_port

RLHF = RLHF_COMMAND
__all__ = ["RLHF", "CliServer", "free_port"]


class CliServer(ServiceProcess):
    """`rlhf serve <args>` in a subprocess; waits for SERVING; SIGTERM on exit."""

    def __init__(self, args: list[str], log_path: Path | None = None, env: dict | None = None, **options):
        super().__init__(args, log_path=log_path, env={"RLHF_LOG_FORMAT": "text", **(env or {})}, **options)

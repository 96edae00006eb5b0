"""Test helpers: hang guards, free ports, `rlhf ...` run to completion, and `rlhf serve ...` started as a real
separate process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from rlhf.toy.processes import RLHF_COMMAND, ServiceProcess, free_port

RLHF = RLHF_COMMAND
__all__ = ["RLHF", "CliServer", "Service", "free_port", "hang_guard", "rlhf"]

# Every time limit in the tests is a hang guard, never a performance assertion (tests/conftest.py says how they
# are set); $RLHF_TEST_TIME_SCALE multiplies them all, for a machine slower or busier than any they were set on.
TIME_SCALE = float(os.environ.get("RLHF_TEST_TIME_SCALE", "1"))
# What one `rlhf train ...` of the tests may take before it counts as hung: their longest takes a few minutes on
# an idle 2-core machine.
TRAINING_HANG_GUARD_S = 3600.0
# What a service may take to load and answer SERVING (about 10 s idle, a vLLM policy 30 s; several start at once in
# some tests).
SERVICE_START_HANG_GUARD_S = 900.0


def hang_guard(seconds: float) -> float:
    """seconds, scaled by $RLHF_TEST_TIME_SCALE."""
    return seconds * TIME_SCALE


def rlhf(*args: str, timeout: float = TRAINING_HANG_GUARD_S, env: dict | None = None) -> subprocess.CompletedProcess:
    """`rlhf --log-level WARNING ARGS` to completion; it must exit 0 (its stderr's tail says why not)."""
    result = subprocess.run(
        [*RLHF_COMMAND, "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=hang_guard(timeout),
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


class Service(ServiceProcess):
    """A ServiceProcess whose wait for SERVING is a hang guard: start's timeout, scaled here by
    $RLHF_TEST_TIME_SCALE (pass it unscaled)."""

    def start(self, timeout: float = SERVICE_START_HANG_GUARD_S) -> Service:
        return super().start(hang_guard(timeout))


class CliServer(Service):
    """`rlhf serve <args>` in a subprocess; waits for SERVING; SIGTERM on exit."""

    def __init__(self, args: list[str], log_path: Path | None = None, env: dict | None = None, **options):
        super().__init__(args, log_path=log_path, env={"RLHF_LOG_FORMAT": "text", **(env or {})}, **options)

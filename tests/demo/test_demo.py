"""`rlhf demo` end to end at a reduced size, through the real process orchestration."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import hang_guard

SMALL = ["--steps", "3", "--data-scale", "0.1", "--ppo-batch-size", "8", "--eval-prompts", "8"]


def _interruptible() -> None:
    """In the child: Ctrl-C acts, as in a terminal. A test suite started as a background job (`make test &`)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _demo(workdir, *extra, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLHF_LOG_FORMAT": "text"}
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf.cli", "demo", "--workdir", str(workdir), *SMALL, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=_interruptible,
        **kwargs,
    )


def _ports_in(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output)]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A whole small demo run: (work dir, exit code, output)."""
    workdir = tmp_path_factory.mktemp("demo")
    proc = _demo(workdir)
    output, _ = proc.communicate(timeout=hang_guard(3600))
    return workdir, proc.returncode, output


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports(finished_run):
    tmp_path, returncode, output = finished_run
    assert returncode == 0, output[-5000:]
    for header in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"=== {header}" in output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ppo_steps"] == 3
    assert 0.0 <= report["reward_model_accuracy"] <= 1.0
    for policy in ("sft", "ppo"):
        assert isinstance(report[policy]["ground_truth"], float)
        assert len(report[policy]["samples"]) == 3
    assert report["final_kl"] is not None
    assert set(report["stage_seconds"]) >= {"prepare", "sft", "rm", "ppo", "evaluate"}
    assert "ground-truth score" in output and "before:" in output and "after:" in output
    png = tmp_path / "training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (tmp_path / "ppo" / "metrics.jsonl").exists() and (tmp_path / "ppo" / "tb").is_dir()
    ports = _ports_in(output)
    assert len(ports) >= 4  # policy, reference, reward, learner
    assert not any(_listening(p) for p in ports), "a demo process is still serving"

    # A rerun reuses every finished stage.
    again = _demo(tmp_path)
    output, _ = again.communicate(timeout=hang_guard(1800))
    assert again.returncode == 0, output[-3000:]
    assert output.count("reusing") >= 5


@pytest.mark.slow
def test_ctrl_c_stops_every_process(finished_run, tmp_path):
    # Start from a work dir whose model and data stages are done, so the run soon reaches PPO.
    assert finished_run[1] == 0, finished_run[2][-3000:]
    shutil.copytree(finished_run[0], tmp_path, dirs_exist_ok=True)
    for name in ("ppo", "evaluate"):
        (tmp_path / "stages" / f"{name}.json").unlink()
    shutil.rmtree(tmp_path / "ppo")
    proc = _demo(tmp_path, "--steps", "200", start_new_session=True)
    seen = ""
    deadline = time.monotonic() + hang_guard(1800)
    while "learner   control API" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
    assert "learner   control API" in seen, seen[-3000:]
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    rest, _ = proc.communicate(timeout=hang_guard(600))
    assert proc.returncode == 130, (seen + rest)[-3000:]
    ports = _ports_in(seen)
    assert len(ports) >= 4
    deadline = time.monotonic() + hang_guard(60)  # the demo waits for its children, so this should hold at once
    while any(_listening(p) for p in ports):
        assert time.monotonic() < deadline, "a demo process outlived Ctrl-C"
        time.sleep(0.1)

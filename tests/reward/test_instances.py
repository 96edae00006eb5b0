"""`rlhf serve reward --instances N`: model worker processes that run batches concurrently.

The server (a separate process through the CLI) keeps its model in worker processes; several of
them score like one, and a worker that dies fails only its batch (UNAVAILABLE, which clients
retry) and is replaced.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from rlhf.reward import RewardClient
from rlhf.reward.local import LocalReward
from rlhf.v1 import reward_pb2, reward_pb2_grpc
from tests.helpers import CliServer, hang_guard

PROMPT = "Human: Tell me about cats.\nAssistant:"
ITEMS = [(PROMPT, f" cats are kind and warm, number {i}.") for i in range(24)]


def model_workers(server_pid: int) -> list[int]:
    """The server's model worker processes (its spawned children, not multiprocessing's resource tracker)."""
    workers = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:  # just exited
                continue
            if b"spawn_main" in command:
                workers.append(int(pid))
    return sorted(workers)


def wait_for_workers(server_pid: int, count: int, exclude: set[int], timeout: float = 600) -> list[int]:
    deadline = time.monotonic() + hang_guard(timeout)
    while time.monotonic() < deadline:
        workers = model_workers(server_pid)
        if len(workers) == count and not exclude & set(workers):
            return workers
        time.sleep(0.1)
    raise AssertionError(f"workers of {server_pid}: {model_workers(server_pid)}")


def wait_for_log(server: CliServer, *lines: str, timeout: float = 600) -> None:
    """Poll the server's log until every line is in it: a log line is written after the event it reports."""
    timeout = hang_guard(timeout)
    deadline = time.monotonic() + timeout
    while not all(line in (logs := server.logs(20000)) for line in lines):
        assert time.monotonic() < deadline, f"not all of {lines} in the log after {timeout}s:\n{logs[-3000:]}"
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_two_instances_score_like_one_and_a_killed_worker_is_replaced(reward_model_dir, tmp_path):
    expected = LocalReward(str(reward_model_dir), device="cpu").score(ITEMS)
    args = [
        "serve",
        "reward",
        "--model",
        str(reward_model_dir),
        "--device",
        "cpu",
        "--instances",
        "2",
        "--max-batch-size",
        "4",
        "--max-wait-ms",
        "5",
    ]
    with CliServer(args, log_path=tmp_path / "reward.log") as server, RewardClient(server.target) as client:
        workers = wait_for_workers(server.proc.pid, 2, exclude=set())
        with ThreadPoolExecutor(8) as pool:  # concurrent single-item requests: batches on both workers
            scores = list(pool.map(lambda item: client.score([item])[0], ITEMS))
        assert scores == pytest.approx(expected, abs=1e-5)

        os.kill(workers[0], signal.SIGKILL)
        with grpc.insecure_channel(server.target) as channel:  # no retries: see the failed batch itself
            stub = reward_pb2_grpc.RewardScoringStub(channel)
            request = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=p, response=r) for p, r in ITEMS])
            codes = []
            for _ in range(4):  # the two workers take turns: one of these lands on the dead one
                try:
                    stub.Score(request, timeout=60)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())
                    assert "reward model process exited" in err.details()
        assert grpc.StatusCode.UNAVAILABLE in codes and set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}

        replaced = wait_for_workers(server.proc.pid, 2, exclude={workers[0]})
        assert workers[1] in replaced
        assert client.score(ITEMS) == pytest.approx(expected, abs=1e-5)  # served by both again
        wait_for_log(server, "reward model process died", "reward model process restarted")
        assert "Loading weights" not in server.logs(20000)  # no Hugging Face progress bars in service logs
        assert server.running()

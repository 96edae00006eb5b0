"""`rlhf serve reward --function`: a Python function behind the RewardScoring API, as a separate process."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from rlhf.core.errors import UserError
from rlhf.reward import RewardClient
from rlhf.reward.function import RewardFunctionFailed, checked_scores, load_reward_function
from tests.helpers import RLHF, CliServer, hang_guard

FUNCTIONS = "tests.reward.reward_functions"


@pytest.fixture(scope="module")
def length_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "reward-fn.log"
    with CliServer(["serve", "reward", "--function", f"{FUNCTIONS}:length_reward"], log_path=log) as process:
        yield process


@pytest.fixture(scope="module")
def misbehaving_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "reward-bad.log"
    with CliServer(
        ["serve", "reward", "--function", f"{FUNCTIONS}:misbehaving", "--max-wait-ms", "0"], log_path=log
    ) as process:
        yield process


def test_a_function_scores_through_the_client_and_the_cli(length_server):
    with RewardClient(length_server.target) as client:
        assert client.score([("p", "abc"), ("q", "hello world")]) == [3.0, 11.0]
        info = client.model_info()
    assert info.model_name == f"function:{FUNCTIONS}:length_reward" and len(info.model_version) == 16
    out = subprocess.run(
        [*RLHF, "score", "--target", length_server.target, "--prompt", "x", "--response", "four"],
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
    )
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == 4.0


@pytest.mark.parametrize(
    ("how", "code", "message"),
    [
        ("raise", grpc.StatusCode.INTERNAL, "the reward function raised ValueError: no reward for you"),
        ("nan", grpc.StatusCode.FAILED_PRECONDITION, "nan at index 0; scores must be finite"),
        ("exit", grpc.StatusCode.INTERNAL, "the reward function raised SystemExit"),
        ("text", grpc.StatusCode.FAILED_PRECONDITION, "a str ('high') at index 0, not a number"),
        ("short", grpc.StatusCode.FAILED_PRECONDITION, "1 scores for 2 items"),
        ("dict", grpc.StatusCode.FAILED_PRECONDITION, "a dict, not a list of 2 numbers"),
    ],
)
def test_a_misbehaving_function_gets_a_clear_status_and_the_server_keeps_serving(
    misbehaving_server, how, code, message
):
    with RewardClient(misbehaving_server.target, timeout=30) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.score([("p", how), ("p", "second")])
        assert caught.value.code() == code and message in caught.value.details()
        assert client.score([("p", "fine"), ("p", "also fine")]) == [1.0, 1.0]  # still serving


def test_checked_scores_accepts_numbers_arrays_and_tensors():
    import numpy as np
    import torch

    assert checked_scores([1, 2.5, True], 3) == [1.0, 2.5, 1.0]
    assert checked_scores(np.array([0.5, 1.5]), 2) == [0.5, 1.5]
    assert checked_scores(torch.tensor([2.0]), 1) == [2.0]
    with pytest.raises(RewardFunctionFailed, match="inf at index 1"):
        checked_scores([0.0, float("inf")], 2)
    with pytest.raises(RewardFunctionFailed, match="1e[+]300 at index 0; scores must be finite float32"):
        checked_scores([1e300], 1)  # finite in Python, inf as a proto float
    with pytest.raises(RewardFunctionFailed, match="at index 0; scores must be finite"):
        checked_scores([10**400], 1)
    with pytest.raises(RewardFunctionFailed, match="NoneType"):
        checked_scores(None, 1)


def test_bad_function_specs_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="expected PKG.MODULE:FN"):
        load_reward_function("no_colon")
    with pytest.raises(UserError, match="cannot import no_such_pkg.mod: ModuleNotFoundError"):
        load_reward_function("no_such_pkg.mod:fn")
    with pytest.raises(UserError, match="has no attribute 'missing'"):
        load_reward_function(f"{FUNCTIONS}:missing")
    with pytest.raises(UserError, match="is a int, not a function"):
        load_reward_function(f"{FUNCTIONS}:NOT_A_FUNCTION")
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def shout(prompts, responses):\n    return [float(r.isupper()) for r in responses]\n")
    assert load_reward_function(f"{rewards}:shout")(["p"], ["HI"]) == [1.0]
    for args in (["--function", "no_colon"], [], ["--function", f"{FUNCTIONS}:length_reward", "--model", "m"]):
        out = subprocess.run([*RLHF, "serve", "reward", *args], capture_output=True, text=True, timeout=hang_guard(600))
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_admission_control_answers_resource_exhausted_at_once_and_clients_retry(tmp_path):
    """--max-queue 8 against bursts of 4-item requests: the server answers OK or RESOURCE_EXHAUSTED, never
    DEADLINE_EXCEEDED; the project's client backs off and retries until it is served."""
    from concurrent.futures import ThreadPoolExecutor

    from rlhf.v1 import reward_pb2, reward_pb2_grpc

    args = [
        "serve",
        "reward",
        "--function",
        f"{FUNCTIONS}:slow_length",
        "--max-queue",
        "8",
        "--max-batch-size",
        "4",
        "--max-items-per-request",
        "4",
        "--max-wait-ms",
        "0",
    ]
    with CliServer(args, log_path=tmp_path / "reward.log") as server:
        request = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt="p", response="abc")] * 4)

        def raw_call(_):  # a plain channel: no retry policy, so the server's own answer shows
            with grpc.insecure_channel(server.target) as channel:
                try:
                    reward_pb2_grpc.RewardScoringStub(channel).Score(request, timeout=20)
                    return grpc.StatusCode.OK, ""
                except grpc.RpcError as err:
                    return err.code(), err.details()

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(raw_call, range(32)))
        codes = {code for code, _ in answers}
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, answers
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        refused = next(details for code, details in answers if code == grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "items queued" in refused and "limit of 8" in refused

        def client_call(_):
            with RewardClient(server.target, timeout=20) as client:
                return client.score([("p", "abc")] * 4)

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(client_call, range(6))) == [[3.0] * 4] * 6


def test_a_client_under_load_sees_no_error_while_one_of_two_replicas_drains(tmp_path):
    """Two reward replicas behind one round_robin target; SIGTERM one mid-load: every call still succeeds
    (in-flight calls finish on the draining one; new calls go to the other, or are retried there)."""
    import signal
    import threading
    import time

    args = ["serve", "reward", "--function", f"{FUNCTIONS}:slow_length", "--max-wait-ms", "0"]
    with CliServer(args, log_path=tmp_path / "a.log") as a, CliServer(args, log_path=tmp_path / "b.log") as b:
        target = f"ipv4:{a.target},{b.target}"  # one name, two addresses: gRPC balances over both
        results, errors, stop = [], [], threading.Event()

        def load():
            with RewardClient(target, timeout=30) as client:
                while not stop.is_set():
                    try:
                        results.append(client.score([("p", "abcd")]))
                    except grpc.RpcError as err:
                        errors.append(f"{err.code().name}: {err.details()}")

        threads = [threading.Thread(target=load) for _ in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        before = len(results)
        a.proc.send_signal(signal.SIGTERM)  # drain: finish in-flight calls, take no new ones, exit
        assert a.proc.wait(30) == 0
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "a call hung"
        assert not errors, errors[:3]
        assert before > 0 and len(results) > before + 6  # served throughout, by the replica left after the drain
        assert all(r == [4.0] for r in results)

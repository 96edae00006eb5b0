"""`rlhf train ppo` checks its services before any model loads: a wrong address fails in seconds with
one line naming the flag, another kind of service is named as such, and Ctrl-C ends every wait at once.

The learner runs as a real process through the CLI; the servers it meets are real gRPC servers built
on the project's bootstrap (health and reflection), with no model behind them.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
import time
from contextlib import ExitStack

import grpc
import pytest

from rlhf.core.client import BaseClient
from rlhf.core.server import ServerOptions, ServerThread
from rlhf.learner.retries import ServiceDown, with_retries
from rlhf.toy.processes import RLHF_COMMAND, free_port
from tests.helpers import hang_guard


class BareService:
    """Serves health and reflection under `service_name`, no RPCs; SERVING once `loaded` is set."""

    name = "bare"

    def __init__(self, service_name: str, loaded: bool = True):
        self.service_names = [service_name]
        self.loaded = threading.Event()
        if loaded:
            self.loaded.set()

    def add_to_server(self, server):
        pass

    async def load(self):
        await asyncio.to_thread(self.loaded.wait, 120)

    async def close(self):
        self.loaded.set()


def serve(stack: ExitStack, service_name: str, loaded: bool = True, **options) -> str:
    service, port = BareService(service_name, loaded), free_port()
    server = ServerThread(service, ServerOptions(host="127.0.0.1", port=port, **options))
    starter = threading.Thread(target=server.start, daemon=True)  # start() returns once SERVING
    starter.start()
    stack.callback(server.stop)
    stack.callback(service.loaded.set)
    deadline = time.monotonic() + hang_guard(600)
    while not socket_open(port):
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)
    return f"{'localhost' if options else '127.0.0.1'}:{port}"  # the server certificate names localhost


def socket_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def learner(tmp_path, policy: str, reward: str, reference: str, *flags: str) -> subprocess.Popen:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Human: Describe cats.\\nAssistant:"}\n')
    # --model names no dir: if a model were loaded before the services are checked, that would fail first
    command = [
        *RLHF_COMMAND,
        "train",
        "ppo",
        "--model",
        str(tmp_path / "no-model-here"),
        "--policy",
        policy,
        "--reward",
        reward,
        "--reference",
        reference,
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "out"),
        "--port",
        "0",
        "--device",
        "cpu",
        *flags,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=hang_guard(timeout))
    return proc.returncode, stderr.strip()


def test_a_wrong_address_fails_within_seconds_naming_the_flag(tmp_path):
    with ExitStack() as stack:
        reward, reference = serve(stack, "rlhf.v1.RewardScoring"), serve(stack, "rlhf.v1.ReferencePolicy")
        nothing = f"127.0.0.1:{free_port()}"
        start = time.monotonic()
        code, stderr = finish(learner(tmp_path, nothing, reward, reference), timeout=600)
        elapsed = time.monotonic() - start
    assert code == 2 and elapsed < hang_guard(120), (code, elapsed, stderr)  # not the 300 s --service-timeout
    assert stderr.splitlines() == [
        f"rlhf: error: --policy {nothing}: nothing answers there (no connection within 5s, --connect-timeout)"
    ]


@pytest.mark.parametrize("wrong", ["--reward", "--reference"])
def test_each_flag_is_checked(tmp_path, wrong):
    with ExitStack() as stack:
        targets = {
            "--policy": serve(stack, "rlhf.v1.PolicyInference"),
            "--reward": serve(stack, "rlhf.v1.RewardScoring"),
            "--reference": serve(stack, "rlhf.v1.ReferencePolicy"),
        }
        targets[wrong] = f"127.0.0.1:{free_port()}"
        code, stderr = finish(learner(tmp_path, targets["--policy"], targets["--reward"], targets["--reference"]), 60)
    assert code == 2 and stderr.splitlines()[-1].startswith(f"rlhf: error: {wrong} {targets[wrong]}: nothing answers")


def test_another_kind_of_service_is_named(tmp_path):
    with ExitStack() as stack:
        reward, reference = serve(stack, "rlhf.v1.RewardScoring"), serve(stack, "rlhf.v1.ReferencePolicy")
        code, stderr = finish(learner(tmp_path, reward, reward, reference), timeout=600)
    assert code == 2
    assert stderr.splitlines() == [
        f"rlhf: error: --policy: {reward} serves rlhf.v1.RewardScoring, not rlhf.v1.PolicyInference"
    ]


def test_ctrl_c_while_waiting_for_a_loading_service_exits_at_once(tmp_path):
    with ExitStack() as stack:
        policy = serve(stack, "rlhf.v1.PolicyInference", loaded=False)  # NOT_SERVING: "loading" for good
        reward, reference = serve(stack, "rlhf.v1.RewardScoring"), serve(stack, "rlhf.v1.ReferencePolicy")
        proc = learner(tmp_path, policy, reward, reference)
        stack.callback(proc.kill)
        seen = ""
        while "waiting for the service to report SERVING" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        code, stderr = finish(proc, timeout=600)
        elapsed = time.monotonic() - start
    assert elapsed < hang_guard(60) and code == 2, (elapsed, code, stderr)  # the wait would be for good
    assert stderr.splitlines()[-1].startswith(f"rlhf: error: --policy {policy}: stop requested while waiting")


def test_a_stop_request_ends_the_health_wait_between_retries():
    """Mid-run: a call fails UNAVAILABLE, and the wait for the restarted server to load is cut short."""
    with ExitStack() as stack:
        client = stack.enter_context(BaseClient(serve(stack, "rlhf.v1.PolicyInference", loaded=False)))
        stop = threading.Event()

        class Unavailable(grpc.RpcError):
            def code(self):
                return grpc.StatusCode.UNAVAILABLE

            def details(self):
                return "restarting"

        def down():
            threading.Timer(0.5, stop.set).start()  # Ctrl-C, half a second into the wait
            raise Unavailable()

        start = time.monotonic()
        with pytest.raises(ServiceDown, match="stop requested"):
            with_retries("generate", 300.0, down, wait_ready=client.wait_until_serving, abort=stop.is_set)
        assert time.monotonic() - start < hang_guard(30)  # not the 300 s --service-timeout


def test_client_commands_name_the_target_and_the_wrong_kind_of_service():
    with ExitStack() as stack:
        reward = serve(stack, "rlhf.v1.RewardScoring")
        nothing = f"127.0.0.1:{free_port()}"
        commands = {
            "generate at a reward service": (
                ["generate", "--target", reward, "--prompt", "hi"],
                f"rlhf: error: {reward} (generate): UNIMPLEMENTED: {reward} serves "
                "rlhf.v1.RewardScoring, not rlhf.v1.PolicyInference",
            ),
            "learner status at nothing": (
                ["learner", "status", "--target", nothing, "--timeout", "3"],
                f"rlhf: error: {nothing} (status): ",
            ),
            "learner watch at nothing": (
                ["learner", "watch", "--target", nothing],
                f"rlhf: error: {nothing} (watch): ",
            ),
            "generate at nothing": (
                ["generate", "--target", nothing, "--prompt", "hi", "--timeout", "3"],
                f"rlhf: error: {nothing} (generate): ",
            ),
        }
        for what, (args, start) in commands.items():
            result = subprocess.run([*RLHF_COMMAND, *args], capture_output=True, text=True, timeout=hang_guard(600))
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(start), (what, result.stderr)


def test_python_clients_raise_one_exception_type_with_target_method_and_status():
    from rlhf.core.client import ServiceError
    from rlhf.core.types import GenerationParams
    from rlhf.policy import PolicyClient

    with ExitStack() as stack:
        reward = serve(stack, "rlhf.v1.RewardScoring")
        with PolicyClient(reward, timeout=10) as client, pytest.raises(ServiceError) as info:
            client.generate(["hi"], GenerationParams())
    err = info.value
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (err.target, err.method) == (reward, "generate")
    assert (
        str(err) == f"{reward} (generate): UNIMPLEMENTED: {reward} serves rlhf.v1.RewardScoring, not "
        "rlhf.v1.PolicyInference"
    )


@pytest.mark.parametrize("client_cert", [True, False])
def test_mtls_to_the_services_with_a_client_certificate(tmp_path, tls_dir, client_cert):
    tls = {
        "tls_cert": str(tls_dir / "server.crt"),
        "tls_key": str(tls_dir / "server.key"),
        "tls_client_ca": str(tls_dir / "ca.crt"),
    }
    flags = ["--service-tls-ca", str(tls_dir / "ca.crt")]
    if client_cert:
        flags += ["--service-tls-cert", str(tls_dir / "client.crt"), "--service-tls-key", str(tls_dir / "client.key")]
    with ExitStack() as stack:
        policy, reward, reference = (
            serve(stack, name, **tls)
            for name in ("rlhf.v1.PolicyInference", "rlhf.v1.RewardScoring", "rlhf.v1.ReferencePolicy")
        )
        code, stderr = finish(learner(tmp_path, policy, reward, reference, *flags), timeout=600)
    assert code == 2
    if client_cert:  # every service checked out; what fails next is the (absent) model
        assert "--policy" not in stderr and "no-model-here" in stderr.splitlines()[-1], stderr
    else:  # the servers require a client certificate: the handshake fails
        replica = policy.replace("localhost", "127.0.0.1")  # a replica is an address the name resolved to
        assert stderr.splitlines()[-1] == (
            f"rlhf: error: --policy {replica}: nothing answers there or its TLS "
            "handshake fails (check --service-tls-*) (no connection within 5s, "
            "--connect-timeout)"
        )


def test_a_wrong_token_is_named_before_any_model_loads(tmp_path):
    (tmp_path / "server-token").write_text("right\n")
    (tmp_path / "client-token").write_text("wrong\n")
    with ExitStack() as stack:
        policy, reward, reference = (
            serve(stack, name, auth_token_file=str(tmp_path / "server-token"))
            for name in ("rlhf.v1.PolicyInference", "rlhf.v1.RewardScoring", "rlhf.v1.ReferencePolicy")
        )
        policy = policy.replace("localhost", "127.0.0.1")
        code, stderr = finish(
            learner(tmp_path, policy, reward, reference, "--auth-token-file", str(tmp_path / "client-token")),
            timeout=600,
        )
    assert code == 2 and stderr.splitlines()[-1].startswith(f"rlhf: error: --policy {policy}: UNAUTHENTICATED"), stderr
    assert "--auth-token-file" in stderr.splitlines()[-1]

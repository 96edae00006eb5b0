"""mTLS end to end: the four services as processes, every link on mutual TLS with one CA, health on its own
plaintext port (as kubelet probes it), and clients without a certificate, or with another CA's, refused.

Every process is configured through the same environment variables the k8s/components/mtls component sets
(RLHF_TLS_* and RLHF_HEALTH_PORT), so this test also checks that wiring.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlhf.core.client import ClientOptions, make_channel
from rlhf.learner.client import LearnerClient
from rlhf.policy.client import PolicyClient
from rlhf.toy.processes import RLHF_COMMAND, free_port
from tests.certs import make_ca, make_leaf
from tests.helpers import Service, hang_guard
from tests.learner.test_learner_acceptance import read_jsonl

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
ROLES = ("policy", "reward", "reference", "learner", "operator")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """One CA for the cluster and a certificate per role; a stranger from another CA."""
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root, "ca")
    for role in ROLES:
        make_leaf(root, role, ca, ("localhost", "127.0.0.1"))
    make_leaf(root, "stranger", make_ca(root, "other-ca"), ("localhost", "127.0.0.1"))
    return root


def tls_env(pki: Path, role: str) -> dict[str, str]:
    """What the mTLS component puts in each pod: serve with the role's certificate and demand one from
    clients (the cluster CA), and present the same certificate when calling other services."""
    cert, key, ca = str(pki / f"{role}.crt"), str(pki / f"{role}.key"), str(pki / "ca.crt")
    return {
        "RLHF_TLS_CERT": cert,
        "RLHF_TLS_KEY": key,
        "RLHF_TLS_CLIENT_CA": ca,
        "RLHF_TLS_CA": ca,
        "RLHF_TLS_CLIENT_CERT": cert,
        "RLHF_TLS_CLIENT_KEY": key,
        "OMP_NUM_THREADS": "1",
    }


def health(target: str, options: ClientOptions | None) -> int | grpc.StatusCode:
    """The health status over a plaintext (options None) or TLS channel; the error code if the call fails."""
    channel = make_channel(target, options) if options else grpc.insecure_channel(target)
    with channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        except grpc.RpcError as err:
            return err.code()


def as_role(pki: Path, role: str | None, ca: str = "ca") -> ClientOptions:
    cert = {"tls_cert": str(pki / f"{role}.crt"), "tls_key": str(pki / f"{role}.key")} if role else {}
    return ClientOptions(timeout=10, max_attempts=1, tls_ca=str(pki / f"{ca}.crt"), **cert)


def assert_mtls_only(pki: Path, target: str, health_port: int) -> None:
    assert health(target, as_role(pki, "operator")) == SERVING
    assert health(target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext to the TLS port
    assert health(target, as_role(pki, None)) == grpc.StatusCode.UNAVAILABLE  # TLS, but no client certificate
    assert health(target, as_role(pki, "stranger")) == grpc.StatusCode.UNAVAILABLE  # another CA's certificate
    assert health(f"127.0.0.1:{health_port}", None) == SERVING  # kubelet's probe: plaintext, health only


def test_ppo_through_all_four_services_on_mtls(untrained, pki, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    learner_port, learner_health = free_port(), free_port()
    learner_target = f"127.0.0.1:{learner_port}"

    def service(stack: ExitStack, role: str, name: str, *args: str) -> Service:
        return stack.enter_context(
            Service(
                ["serve", role, "--model", str(untrained.sft), "--device", "cpu", *args],
                log_path=logs / f"{name}.log",
                name=name,
                env=tls_env(pki, role),
                health_port=True,
            )
        )

    with ExitStack() as stack:
        policy = service(stack, "policy", "policy0", "--learner", learner_target)
        reward, reference = service(stack, "reward", "reward"), service(stack, "reference", "reference")
        out = tmp_path / "ppo"
        with (logs / "learner.log").open("ab") as log:
            learner = subprocess.Popen(
                [
                    *RLHF_COMMAND,
                    "train",
                    "ppo",
                    "--model",
                    str(untrained.sft),
                    "--value-model",
                    str(untrained.rm),
                    "--policy",
                    policy.target,
                    "--reward",
                    reward.target,
                    "--reference",
                    reference.target,
                    "--prompts",
                    str(untrained.prompts),
                    "--out",
                    str(out),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(learner_port),
                    "--health-port",
                    str(learner_health),
                    "--device",
                    "cpu",
                    "--steps",
                    "500",
                    "--batch-size",
                    "4",
                    "--max-new-tokens",
                    "6",
                    "--ppo-epochs",
                    "1",
                    "--save-every",
                    "1000",
                    "--service-timeout",  # a hang guard: a replica joins mid-run
                    f"{hang_guard(600):.0f}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**_base_env(), **tls_env(pki, "learner")},
            )
        stack.callback(lambda: learner.poll() is None and learner.kill())
        with LearnerClient(learner_target, as_role(pki, "operator")) as control:
            control.wait_until_serving(timeout=hang_guard(600))
            _wait(lambda: control.status().step >= 1, learner, logs)
            for proc in (policy, reward, reference):
                assert_mtls_only(pki, proc.target, proc.health_port)
            assert_mtls_only(pki, learner_target, learner_health)
            # A replica that joins mid-run pulls the current weights from the learner, over mTLS.
            joined = service(stack, "policy", "policy1", "--learner", learner_target)
            with PolicyClient(joined.target, as_role(pki, "operator")) as replica:
                assert replica.model_info().weights_version >= 1
            assert "pulled weights from the learner" in joined.logs(20000)
        stop = subprocess.run(
            [*RLHF_COMMAND, "learner", "stop", "--target", learner_target, "--timeout", f"{hang_guard(600):.0f}"],
            env={**_base_env(), **tls_env(pki, "operator")},
            capture_output=True,
            text=True,
            timeout=hang_guard(1200),
        )
        assert stop.returncode == 0, stop.stderr
        assert learner.wait(hang_guard(600)) == 0, (logs / "learner.log").read_text()[-4000:]

    steps = [m["step"] for m in read_jsonl(out / "metrics.jsonl")]
    assert len(steps) >= 1 and steps == list(range(1, len(steps) + 1))


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RLHF_TLS_")}


def _wait(condition, learner: subprocess.Popen, logs: Path, timeout: float = 1800) -> None:
    deadline = time.monotonic() + hang_guard(timeout)
    while not condition():
        assert learner.poll() is None, (logs / "learner.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "the learner made no step"
        time.sleep(0.2)

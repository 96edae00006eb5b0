"""Bearer-token auth, TLS and mTLS on the reward service: refused or accepted as configured."""

from __future__ import annotations

import grpc
import pytest

from rlhf.core.client import ClientOptions
from rlhf.core.server import ServerOptions, ServerThread
from rlhf.reward import RewardClient
from rlhf.reward.config import RewardServiceConfig
from rlhf.reward.service import RewardService

ITEM = [("Human: Describe cats.\nAssistant:", " cats are kind.")]


def _serve(model_dir, port, **options) -> ServerThread:
    service = RewardService(RewardServiceConfig(model=str(model_dir), device="cpu", max_wait_ms=0))
    return ServerThread(service, ServerOptions(port=port, **options))


def _score_code(target: str, **client_options) -> grpc.StatusCode:
    with RewardClient(target, ClientOptions(timeout=10, max_attempts=1, **client_options)) as client:
        try:
            assert len(client.score(ITEM)) == 1
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()


def test_bearer_token_refused_or_accepted(reward_model_dir, port, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    with _serve(reward_model_dir, port, auth_token_file=str(tmp_path / "token")):
        target = f"127.0.0.1:{port}"
        assert _score_code(target) == grpc.StatusCode.UNAUTHENTICATED
        assert _score_code(target, auth_token="wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert _score_code(target, auth_token="s3cret") == grpc.StatusCode.OK
        with RewardClient(target) as client:  # health stays open for probes
            client.wait_until_serving(timeout=10)


def test_tls_refuses_plaintext_and_accepts_clients_that_trust_its_ca(reward_model_dir, port, tls_dir):
    with _serve(reward_model_dir, port, tls_cert=str(tls_dir / "server.crt"), tls_key=str(tls_dir / "server.key")):
        target = f"localhost:{port}"
        assert _score_code(target) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
        assert _score_code(target, tls_ca=str(tls_dir / "other-ca.crt")) == grpc.StatusCode.UNAVAILABLE
        assert _score_code(target, tls_ca=str(tls_dir / "ca.crt")) == grpc.StatusCode.OK


@pytest.mark.parametrize(
    "client_cert, expected",
    [
        (None, grpc.StatusCode.UNAVAILABLE),
        ("stranger", grpc.StatusCode.UNAVAILABLE),  # signed by a CA the server does not trust
        ("client", grpc.StatusCode.OK),
    ],
)
def test_mtls_requires_a_client_certificate_from_the_client_ca(reward_model_dir, port, tls_dir, client_cert, expected):
    with _serve(
        reward_model_dir,
        port,
        tls_cert=str(tls_dir / "server.crt"),
        tls_key=str(tls_dir / "server.key"),
        tls_client_ca=str(tls_dir / "ca.crt"),
    ):
        cert = {"tls_cert": str(tls_dir / f"{client_cert}.crt"), "tls_key": str(tls_dir / f"{client_cert}.key")}
        options = {"tls_ca": str(tls_dir / "ca.crt"), **(cert if client_cert else {})}
        assert _score_code(f"localhost:{port}", **options) == expected

"""The shared bootstrap: health follows model loading, reflection lists the services, auth guards RPCs."""

import asyncio
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rlhf.core.errors import UserError
from rlhf.core.server import ServerOptions, ServerThread
from tests.helpers import hang_guard


class SlowLoadingService:
    """A service with no RPCs of its own whose load() waits for the test's go-ahead."""

    name = "slow"
    service_names = ["rlhf.v1.RewardScoring"]

    def __init__(self):
        self.release = threading.Event()
        self.closed = False

    def add_to_server(self, server):
        pass

    async def load(self):
        await asyncio.to_thread(self.release.wait, 30)

    async def close(self):
        self.closed = True


def _health(channel, service=""):
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _list_services(channel, metadata=()):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata, timeout=5
    )
    return {s.name for r in replies for s in r.list_services_response.service}


def test_health_is_not_serving_until_loaded_then_serving(port):
    service = SlowLoadingService()
    server = ServerThread(service, ServerOptions(port=port))
    starter = threading.Thread(target=server.start)
    starter.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        service.release.set()
        starter.join(30)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert _health(channel, "rlhf.v1.RewardScoring") == health_pb2.HealthCheckResponse.SERVING
        assert {"rlhf.v1.RewardScoring", "grpc.health.v1.Health"} <= _list_services(channel)
    server.stop()
    assert service.closed


def test_bearer_token_guards_everything_but_health(port, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    service = SlowLoadingService()
    service.release.set()
    with (
        ServerThread(service, ServerOptions(port=port, auth_token_file=str(token_file))),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            _list_services(channel)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            _list_services(channel, metadata=(("authorization", "Bearer wrong"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "rlhf.v1.RewardScoring" in _list_services(channel, metadata=(("authorization", "Bearer s3cret"),))


def test_the_health_port_answers_health_in_plaintext_and_nothing_else(port, tls_dir):
    from rlhf.toy.processes import free_port

    service = SlowLoadingService()
    health_port = free_port()
    tls = {
        "tls_cert": str(tls_dir / "server.crt"),
        "tls_key": str(tls_dir / "server.key"),
        "tls_client_ca": str(tls_dir / "ca.crt"),
    }
    server = ServerThread(service, ServerOptions(port=port, health_port=health_port, **tls))
    starter = threading.Thread(target=server.start)
    starter.start()
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING  # the same states as the main port
        service.release.set()
        starter.join(30)
        assert server.health_port == health_port
        assert _health(channel, "rlhf.v1.RewardScoring") == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:  # reflection, and every model RPC, only behind TLS
            _list_services(channel)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as info:
        _health(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the main port still wants mTLS
    server.stop()
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel, pytest.raises(grpc.RpcError):
        _health(channel)  # stopped with the server


def test_a_taken_health_port_fails_to_start_naming_it(port):
    service = SlowLoadingService()
    service.release.set()
    with ServerThread(service, ServerOptions(port=port)), pytest.raises(UserError) as info:
        ServerThread(SlowLoadingService(), ServerOptions(port=0, health_port=port)).start(timeout=30)
    assert str(info.value) == f"port {port} is in use (--health-port)"


def test_taken_port_fails_to_start(port):
    service = SlowLoadingService()
    service.release.set()
    with ServerThread(service, ServerOptions(port=port)), pytest.raises(UserError, match=f"^port {port} is in use$"):
        ServerThread(SlowLoadingService(), ServerOptions(port=port)).start(timeout=30)


def test_serve_on_a_taken_port_says_so_in_one_line_with_exit_2(port, tiny_model_dir):
    import socket
    import subprocess

    from tests.helpers import RLHF

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))
        taken.listen()
        result = subprocess.run(
            [*RLHF, "serve", "reference", "--model", str(tiny_model_dir), "--port", str(port), "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=hang_guard(600),
        )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"rlhf: error: port {port} is in use"]


def test_resolve_replicas_expands_names_to_every_address():
    from rlhf.core.client import resolve_replicas, split_target

    assert split_target("dns:///policy.rlhf.svc:50052") == ("policy.rlhf.svc", 50052)
    assert split_target("[::1]:7") == ("::1", 7)
    assert resolve_replicas("127.0.0.1:50052") == ["127.0.0.1:50052"]
    assert resolve_replicas("no-such-host.invalid:1") == []
    with pytest.raises(Exception, match="not HOST:PORT"):
        split_target("policy")


def test_resolve_replicas_gives_one_target_per_address(monkeypatch):
    import socket

    from rlhf.core.client import resolve_replicas

    # A headless Service answers with every pod's address (DNS stands in for the cluster here).
    pods = ["10.0.0.7", "10.0.0.5", "10.0.0.7"]
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, **kw: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in pods],
    )
    assert resolve_replicas("policy:50052") == ["10.0.0.5:50052", "10.0.0.7:50052"]
    pods = ["10.0.0.5"]  # scaled down to one pod: still its address, not the name
    assert resolve_replicas("policy:50052") == ["10.0.0.5:50052"]


def test_resolve_replicas_counts_a_dual_stack_address_once(monkeypatch):
    import socket

    from rlhf.core.client import resolve_replicas

    answers = [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "fd00::7")]
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, port, **kw: [(family, socket.SOCK_STREAM, 6, "", (ip, port)) for family, ip in answers],
    )
    assert resolve_replicas("localhost:50052") == ["127.0.0.1:50052"]
    answers = [(socket.AF_INET6, "fd00::7"), (socket.AF_INET6, "fd00::5")]  # an IPv6-only cluster
    assert resolve_replicas("policy:50052") == ["[fd00::5]:50052", "[fd00::7]:50052"]

"""The tunnel that `rlhf k8s status` (and the kind tests) use to reach a pod's gRPC port.

Here each tunnelled connection opens a plain TCP stream to a loopback learner instead of the API
server's port-forward stream, which needs a cluster; the pumping and the gRPC calls are real."""

from __future__ import annotations

import socket

import grpc
import pytest

from rlhf.k8s import status as k8s_status
from rlhf.k8s import tunnel as k8s_tunnel
from rlhf.k8s.cluster import connect
from rlhf.v1 import learner_pb2
from tests.k8s.servers import FakeApiServer, FakeLearner, start_learner

STATUS = learner_pb2.LearnerStatus(
    step=12, total_steps=20, phase="generate", weights_version=12, metrics={"env/reward_mean": 0.5}
)


@pytest.fixture
def learner():
    opened = []
    server, port = start_learner(FakeLearner(STATUS, token="tok"))

    def open_stream():
        opened.append(port)
        return socket.create_connection(("127.0.0.1", port))

    yield open_stream, opened
    server.stop(None)


def test_grpc_calls_pass_through_the_tunnel_both_ways(learner):
    open_stream, opened = learner
    with k8s_tunnel.Tunnel(open_stream) as tunnel:
        for _ in range(3):
            assert k8s_status.learner_status(tunnel.address, "tok") == STATUS
        address = tunnel.address
    # every connection gRPC made went through a stream of its own (gRPC may reuse one across channels)
    assert 1 <= len(opened) <= 3 and int(address.rsplit(":", 1)[1]) != opened[0]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2)


def test_a_stream_that_cannot_open_drops_the_connection_and_the_call_fails_cleanly():
    def refuse():
        raise OSError("no such pod")

    with k8s_tunnel.Tunnel(refuse) as tunnel, pytest.raises(grpc.RpcError) as err:
        k8s_status.learner_status(tunnel.address, None, timeout=2.0)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_status_reaches_the_running_learner_pod_through_a_port_forward(learner, tmp_path, monkeypatch):
    """Of a learner's pods, only index 0 serves (rank 0): status dials that one, not the newest."""
    open_stream, _ = learner
    api = FakeApiServer()
    labels = {"app.kubernetes.io/part-of": "rlhf", "app.kubernetes.io/name": "learner"}
    api.routes[("GET", "/api/v1/namespaces/rlhf/pods")] = (
        200,
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "items": [
                {
                    "metadata": {
                        "name": name,
                        "namespace": "rlhf",
                        "labels": {**labels, "batch.kubernetes.io/job-completion-index": index},
                    },
                    "spec": {"containers": [{"name": "learner"}]},
                    "status": {"phase": "Running"},
                }
                for name, index in (("ppo-0-xyz", "0"), ("ppo-1-abc", "1"))
            ],
        },
    )
    forwarded = []

    def fake_opener(core_api, pod, namespace, port):
        forwarded.append((pod, namespace, port))
        return open_stream

    monkeypatch.setattr(k8s_tunnel, "pod_port_opener", fake_opener)
    token_file = tmp_path / "token"
    token_file.write_text("tok\n")
    try:
        cluster = connect(str(api.kubeconfig(tmp_path)), None, "rlhf")
        line = k8s_status.learner_line(cluster, None, str(token_file))
    finally:
        api.close()
    assert forwarded == [("ppo-0-xyz", "rlhf", 50054)]
    assert line == "learner ppo-0-xyz: step 12/20, phase generate, weights version 12"

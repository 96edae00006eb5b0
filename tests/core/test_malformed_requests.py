"""Bytes that do not parse as the request message get INVALID_ARGUMENT on every RPC of every service (the
bootstrap's MalformedRequestInterceptor), streamed requests included, and the server keeps serving."""

from __future__ import annotations

from contextlib import ExitStack

import grpc
import pytest

from rlhf.core.server import ServerOptions, ServerThread
from rlhf.learner.control import LearnerControl
from rlhf.learner.service import LearnerService
from rlhf.policy.service import PolicyService, PolicyServiceConfig
from rlhf.reference.service import ReferenceService, ReferenceServiceConfig
from rlhf.reward.config import RewardServiceConfig
from rlhf.reward.service import RewardService
from rlhf.v1 import common_pb2, learner_pb2, policy_pb2, reference_pb2, reward_pb2

# Field 1 as a length-delimited value claiming 100 bytes, with 1 there: truncated, so never a valid message.
GARBAGE = b"\x0a\x64\x01"
GARBAGE_MESSAGES = [GARBAGE, b"\xff\xff\xff\xff", b"\x08"]  # truncated length, bad tag, missing varint


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    services = {
        policy_pb2.DESCRIPTOR.services_by_name["PolicyInference"]: PolicyService(
            PolicyServiceConfig(model=str(tiny_model_dir), device="cpu", max_wait_ms=1)),
        reference_pb2.DESCRIPTOR.services_by_name["ReferencePolicy"]: ReferenceService(
            ReferenceServiceConfig(model=str(tiny_model_dir), device="cpu", max_wait_ms=1)),
        reward_pb2.DESCRIPTOR.services_by_name["RewardScoring"]: RewardService(
            RewardServiceConfig(function="rlhf.core.synthetic:ground_truth_rewards", max_wait_ms=0)),
        learner_pb2.DESCRIPTOR.services_by_name["Learner"]: LearnerService(
            LearnerControl(10, str(tmp_path_factory.mktemp("learner")))),
    }
    with ExitStack() as stack:
        yield {descriptor: stack.enter_context(ServerThread(service, ServerOptions(port=0)))
               for descriptor, service in services.items()}


def raw_call(channel: grpc.Channel, service, method, payload: bytes):
    """Send `payload` as the request bytes, with the method's real cardinality; the status code of the answer."""
    path = f"/{service.full_name}/{method.name}"
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    call = kinds[(method.client_streaming, method.server_streaming)](path)  # bytes in, bytes out
    request = iter([payload]) if method.client_streaming else payload
    try:
        reply = call(request, timeout=30)
        if method.server_streaming:
            list(reply)
    except grpc.RpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


def test_every_rpc_answers_unparseable_bytes_with_invalid_argument(servers):
    answers = {}
    for service, port in servers.items():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in service.methods:
                for payload in GARBAGE_MESSAGES:
                    code, details = raw_call(channel, service, method, payload)
                    answers[f"{method.full_name} {payload!r}"] = code
                    if code == grpc.StatusCode.INVALID_ARGUMENT:
                        assert "not a valid protobuf message" in details, details
            # and it still serves a well-formed request
            info = channel.unary_unary(f"/{service.full_name}/GetModelInfo")  # every model service has it
            if "GetModelInfo" in service.methods_by_name:
                assert common_pb2.ModelInfo.FromString(info(common_pb2.GetModelInfoRequest().SerializeToString(),
                                                             timeout=30)) is not None
    wrong = {name: code.name for name, code in answers.items() if code != grpc.StatusCode.INVALID_ARGUMENT}
    assert not wrong, wrong
    assert len(answers) >= 3 * 9

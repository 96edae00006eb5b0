"""Property-based fuzzing of every RPC of every service, the learner's included: generated requests (any
subset of fields, edge values, NaN) and raw byte mutations; and fixed undecodable bytes, which the bootstrap's
MalformedRequestInterceptor answers INVALID_ARGUMENT. Every answer is a proper status, never UNKNOWN;
the server keeps serving; a refused weight stream leaves the weights as they were. `benchmarks/fuzz.py`
runs the same for longer."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.core.server import ServerOptions, ServerThread
from rlhf.core.types import GenerationParams
from rlhf.learner.control import LearnerControl
from rlhf.learner.service import LearnerService
from rlhf.policy.convert import params_to_proto, prompts_to_proto
from rlhf.policy.service import PolicyService, PolicyServiceConfig
from rlhf.reference.service import ReferenceService, ReferenceServiceConfig
from rlhf.reward.config import RewardServiceConfig
from rlhf.reward.service import RewardService
from rlhf.v1 import learner_pb2, policy_pb2, policy_pb2_grpc, reference_pb2, reward_pb2
from tests import fuzzing
from tests.engines import needs_vllm, served_policy

EXAMPLES = 12  # per RPC and kind of input, in `make test`; benchmarks/fuzz.py runs thousands
SERVICES = {
    "policy": policy_pb2.DESCRIPTOR.services_by_name["PolicyInference"],
    "reference": reference_pb2.DESCRIPTOR.services_by_name["ReferencePolicy"],
    "reward": reward_pb2.DESCRIPTOR.services_by_name["RewardScoring"],
    "learner": learner_pb2.DESCRIPTOR.services_by_name["Learner"],
}
# truncated length-delimited field, unterminated tag varint, missing varint value: never a valid message
GARBAGE_MESSAGES = [b"\x0a\x64\x01", b"\xff\xff\xff\xff", b"\x08"]
RPCS = [(name, method.name) for name, service in SERVICES.items() for method in service.methods]
# The policy service on the vLLM engine too: a separate process from its own environment (tests.engines)
VLLM_POLICY = "policy-vllm"
RPCS += [
    pytest.param(VLLM_POLICY, method.name, marks=needs_vllm, id=f"{VLLM_POLICY}-{method.name}")
    for method in SERVICES["policy"].methods
]


def make_services(model_dir, out_dir) -> dict:
    """The four services with small per-request limits, so that every accepted request is cheap."""
    control = LearnerControl(10, str(out_dir))
    control.publish_weights(0, {"w": torch.zeros(4)})
    control.finish()  # a finished run: Stop and SaveCheckpoint answer at once, watchers end
    return {
        "policy": PolicyService(
            PolicyServiceConfig(
                model=str(model_dir), device="cpu", max_wait_ms=1, max_items_per_request=8, weights_stream_timeout=5
            )
        ),
        "reference": ReferenceService(
            ReferenceServiceConfig(model=str(model_dir), device="cpu", max_wait_ms=1, max_items_per_request=8)
        ),
        "reward": RewardService(
            RewardServiceConfig(
                function="rlhf.toy.synthetic:ground_truth_rewards", max_wait_ms=0, max_items_per_request=8
            )
        ),
        "learner": LearnerService(control),
    }


def weights_digest(policy_service: PolicyService) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(policy_service.policy.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def running_in_process(tiny_model_dir, tmp_path_factory):
    services = make_services(tiny_model_dir, tmp_path_factory.mktemp("learner"))
    with ExitStack() as stack:
        ports = {name: stack.enter_context(ServerThread(s, ServerOptions(port=0))) for name, s in services.items()}
        channels = {
            name: stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}")) for name, port in ports.items()
        }
        yield services, channels


@pytest.fixture(scope="module")
def vllm_channel(tiny_model_dir, tmp_path_factory):
    """The vLLM policy service with the same small limits, as a process: its channel."""
    log = tmp_path_factory.mktemp("vllm") / "policy.log"
    limits = {"max_wait_ms": 1, "max_items_per_request": 8, "weights_stream_timeout": 5}
    with (
        served_policy("vllm", tiny_model_dir, log, **limits) as served,
        grpc.insecure_channel(served.target) as channel,
    ):
        yield channel


@pytest.fixture
def running(request, running_in_process):
    """(services, channels): the vLLM policy's channel joins only when a test asks for it (it starts a process)."""
    services, channels = running_in_process
    if VLLM_POLICY in request.node.name:
        channels = {**channels, VLLM_POLICY: request.getfixturevalue("vllm_channel")}
    return services, channels


def service_of(name: str):
    return SERVICES[name.removesuffix("-vllm")]


def served_weights(running, name: str) -> tuple:
    """What identifies the served weights: the in-process model's tensors, or, for the vLLM process, its version
    and the greedy ids and log-probs of a fixed prompt."""
    services, channels = running
    if name == "policy":
        return (weights_digest(services["policy"]),)
    stub = policy_pb2_grpc.PolicyInferenceStub(channels[name])
    greedy = GenerationParams(max_new_tokens=4, temperature=0, ignore_eos=True)
    probe = policy_pb2.GenerateRequest(prompts=prompts_to_proto([[5, 6, 7]]), params=params_to_proto(greedy))
    (sample,) = stub.Generate(probe, timeout=60).samples
    return sample.weights_version, tuple(sample.response_token_ids), tuple(sample.logprobs)


def check(running, name: str, method_name: str, payload: bytes) -> None:
    _, channels = running
    service = service_of(name)
    method = service.methods_by_name[method_name]
    before = served_weights(running, name) if method_name == "UpdateWeights" else None
    code = fuzzing.call(channels[name], service, method, payload)
    assert code != grpc.StatusCode.UNKNOWN, f"{method.full_name} answered UNKNOWN to {payload!r}"
    if before is not None and code != grpc.StatusCode.OK:
        assert served_weights(running, name) == before, "a refused weight stream changed the weights"
    alive = service.methods_by_name["GetStatus" if name == "learner" else "GetModelInfo"]
    health = fuzzing.call(channels[name], service, alive, b"")
    assert health == grpc.StatusCode.OK, f"{name} stopped serving after {method.full_name} got {payload!r}"


@pytest.mark.parametrize(("name", "method_name"), RPCS)
def test_generated_requests_never_get_unknown(running, name, method_name):
    method = service_of(name).methods_by_name[method_name]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(message=fuzzing.messages(method.input_type))
    def property_(message):
        check(running, name, method_name, message.SerializeToString())

    property_()


@pytest.mark.parametrize(("name", "method_name"), RPCS)
def test_mutated_bytes_never_get_unknown(running, name, method_name):
    method = service_of(name).methods_by_name[method_name]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(payload=st.one_of(fuzzing.mutated(method.input_type), st.binary(max_size=32)))
    def property_(payload):
        check(running, name, method_name, payload)

    property_()


@pytest.mark.parametrize(("name", "method_name"), RPCS)
def test_unparseable_bytes_get_invalid_argument_naming_the_problem(running, name, method_name):
    _, channels = running
    service = service_of(name)
    for payload in GARBAGE_MESSAGES:
        code, details = fuzzing.answer(channels[name], service, service.methods_by_name[method_name], payload)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (payload, code, details)
        assert "not a valid protobuf message" in details, details

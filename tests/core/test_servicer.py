"""The policy, reference and reward services answer alike (rlhf.core.servicer): the same status and message,
but for the service's name, while the model loads and when the queue is full, and GetModelInfo of one shape.
Real servers on loopback, real tiny models; only the start of each model's load is held back."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from rlhf.core.server import ServerOptions, ServerThread
from rlhf.policy.service import PolicyService, PolicyServiceConfig
from rlhf.reference.service import ReferenceService, ReferenceServiceConfig
from rlhf.reward.config import RewardServiceConfig
from rlhf.reward.service import RewardService
from rlhf.v1 import (
    common_pb2,
    policy_pb2,
    policy_pb2_grpc,
    reference_pb2,
    reference_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
)
from tests.helpers import free_port, hang_guard

MAX_ITEMS = 4
# The queue holds at most one request; a batch waits long enough for a second request to find it full.
BATCHING = {"max_items_per_request": MAX_ITEMS, "max_queue": MAX_ITEMS, "max_batch_size": 64, "max_wait_ms": 1500}


def policy_call(channel: grpc.Channel, items: int):
    prompts = [policy_pb2.Prompt(text="Hi")] * items
    request = policy_pb2.GenerateRequest(prompts=prompts, params=policy_pb2.SamplingParams(max_new_tokens=2))
    return policy_pb2_grpc.PolicyInferenceStub(channel).Generate.future(request, timeout=60)


def reference_call(channel: grpc.Channel, items: int):
    item = reference_pb2.LogProbsItem(prompt_token_ids=[5, 6], response_token_ids=[7])
    request = reference_pb2.LogProbsRequest(items=[item] * items)
    return reference_pb2_grpc.ReferencePolicyStub(channel).LogProbs.future(request, timeout=60)


def reward_call(channel: grpc.Channel, items: int):
    request = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt="Hi", response=" there")] * items)
    return reward_pb2_grpc.RewardScoringStub(channel).Score.future(request, timeout=60)


def model_info_call(channel: grpc.Channel, stub_class):
    return stub_class(channel).GetModelInfo.future(common_pb2.GetModelInfoRequest(), timeout=60)


def services(tiny_model_dir, reward_model_dir) -> dict:
    """name -> (service, call(channel, items), stub class)."""
    return {
        "policy": (
            PolicyService(PolicyServiceConfig(model=str(tiny_model_dir), device="cpu", **BATCHING)),
            policy_call,
            policy_pb2_grpc.PolicyInferenceStub,
        ),
        "reference": (
            ReferenceService(ReferenceServiceConfig(model=str(tiny_model_dir), device="cpu", **BATCHING)),
            reference_call,
            reference_pb2_grpc.ReferencePolicyStub,
        ),
        "reward": (
            RewardService(RewardServiceConfig(model=str(reward_model_dir), device="cpu", **BATCHING)),
            reward_call,
            reward_pb2_grpc.RewardScoringStub,
        ),
    }


def hold_load(service, release: threading.Event) -> None:
    """The service's model starts loading only once `release` is set (its port is open before)."""
    load = service.load

    async def held() -> None:
        await asyncio.to_thread(release.wait)
        await load()

    service.load = held


def outcome(future, name: str) -> tuple[grpc.StatusCode, str]:
    """The call's status and message, with the service's name in it written <service>."""
    try:
        future.result()
    except grpc.RpcError as err:
        return err.code(), err.details().replace(name, "<service>")
    return grpc.StatusCode.OK, ""


def answers_of(name: str, service, call, stub_class) -> dict:
    """What one service answers while loading, to a request that finds the queue full, and to GetModelInfo."""
    release, port = threading.Event(), free_port()
    hold_load(service, release)
    server = ServerThread(service, ServerOptions(port=port))
    starting = threading.Thread(target=server.start)
    starting.start()
    answers = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            answers["loading"] = outcome(call(channel, 1), name)
            answers["loading info"] = outcome(model_info_call(channel, stub_class), name)
            release.set()
            starting.join(300)
            first = call(channel, MAX_ITEMS - 1)
            deadline = time.monotonic() + hang_guard(300)
            while service.batcher.queued < MAX_ITEMS - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            answers["queue full"] = outcome(call(channel, 2), name)
            answers["first"] = outcome(first, name)
            answers["info"] = model_info_call(channel, stub_class).result()
    finally:
        release.set()
        server.stop()
    return answers


@pytest.fixture(scope="module")
def answers(tiny_model_dir, reward_model_dir):
    return {name: answers_of(name, *parts) for name, parts in services(tiny_model_dir, reward_model_dir).items()}


def test_a_request_while_loading_is_unavailable_with_one_message(answers):
    for key in ("loading", "loading info"):
        seen = {name: a[key] for name, a in answers.items()}
        assert set(seen.values()) == {(grpc.StatusCode.UNAVAILABLE, "the <service> model is still loading")}, seen


def test_a_full_queue_is_resource_exhausted_with_one_message(answers):
    seen = {name: a["queue full"] for name, a in answers.items()}
    expected = (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"<service> is overloaded: {MAX_ITEMS - 1} items queued, 2 more would pass its limit of {MAX_ITEMS} "
        "(--max-queue); retry with backoff",
    )
    assert set(seen.values()) == {expected}, seen
    assert {a["first"] for a in answers.values()} == {(grpc.StatusCode.OK, "")}  # the queued request was served


def test_model_info_has_one_shape(answers):
    shapes = {name: sorted(field.name for field, _ in a["info"].ListFields()) for name, a in answers.items()}
    assert len(set(map(tuple, shapes.values()))) == 1, shapes
    for info in (a["info"] for a in answers.values()):
        assert info.max_items_per_request == MAX_ITEMS and info.max_batch_size == BATCHING["max_batch_size"]
        assert info.model_version and info.parameter_count > 0 and info.device == "cpu"

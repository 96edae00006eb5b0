"""UpdateWeights: pushed weights change what is generated, all or nothing, never mixed within a batch."""

import asyncio
import threading

import grpc
import pytest
import torch

from rlhf.core.server import ServerOptions, ServerThread
from rlhf.core.types import GenerationParams
from rlhf.core.weights import serialized_weight_chunks, weight_chunks
from rlhf.policy.client import PolicyClient
from rlhf.policy.service import PolicyService, PolicyServiceConfig
from rlhf.v1 import learner_pb2_grpc, policy_pb2, policy_pb2_grpc
from rlhf.v1.common_pb2 import GetModelInfoRequest, WeightChunk
from tests.engines import ENGINES, fresh_policy, served_policy
from tests.helpers import hang_guard

EOS = 0  # the tiny tokenizer's EOS id
GREEDY = GenerationParams(max_new_tokens=6, temperature=0)


@pytest.fixture(scope="module")
def original(tiny_model_dir) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()}


def eos_weights(original) -> dict[str, torch.Tensor]:
    """A partial state dict under which greedy decoding says EOS at once (final norm points at EOS)."""
    return {
        "transformer.ln_f.weight": torch.zeros_like(original["transformer.ln_f.weight"]),
        "transformer.ln_f.bias": 1000 * original["transformer.wte.weight"][EOS].clone(),
    }


@pytest.fixture(params=ENGINES)
def policy(request, tiny_model_dir):
    """A fresh server per test (these tests change its weights), under each engine."""
    with (
        fresh_policy(request, request.param, tiny_model_dir, max_wait_ms=1) as served,
        PolicyClient(served.target) as client,
    ):
        yield client


def generated(policy) -> tuple[list[int], int]:
    (sample,) = policy.generate([[5, 6, 7]], GREEDY)
    return sample.response_token_ids, sample.weights_version


def test_pushed_weights_change_generations_and_report_the_new_version(policy, original):
    before, version = generated(policy)
    assert version == 0 and before != [EOS]
    reply = policy.update_weights(eos_weights(original), version=7)
    assert (reply.weights_version, reply.tensors_updated, reply.bytes_received) == (7, 2, 2 * 128 * 4)
    assert generated(policy) == ([EOS], 7)
    assert policy.model_info().weights_version == 7
    # the full state dict back, streamed in small chunks so big tensors span several messages
    reply = policy.update_weights(original, version=8, chunk_bytes=64 * 1024)
    assert reply.tensors_updated == len(original)
    assert generated(policy) == (before, 8)


def refused(policy, chunks) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        policy.stub.UpdateWeights(iter(chunks), timeout=30)
    return info.value


def test_truncated_stream_is_refused_and_the_old_version_keeps_serving(policy, original):
    before = generated(policy)
    chunks = list(weight_chunks(eos_weights(original), version=3))
    error = refused(policy, chunks[:-1])  # no commit message
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in error.details()
    error = refused(policy, list(weight_chunks(original, version=3, chunk_bytes=64 * 1024))[:5] + chunks[-1:])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "incomplete" in error.details()
    assert generated(policy) == before and policy.model_info().weights_version == 0
    # the refused streams left bytes in the receive area; a whole stream still lands intact
    policy.update_weights(eos_weights(original), version=3)
    assert generated(policy) == ([EOS], 3)


def test_serialized_chunks_parse_as_the_codecs_messages(original):
    """The client appends each chunk's data field by hand; the receiver must see the very same messages."""
    state = {**eos_weights(original), "empty": torch.zeros(0), "ids": torch.arange(300), "half": torch.ones(9).half()}
    by_hand = [WeightChunk.FromString(b) for b in serialized_weight_chunks(state, version=9, chunk_bytes=100)]
    assert by_hand == list(weight_chunks(state, version=9, chunk_bytes=100))


def test_sender_dying_mid_stream_changes_nothing(policy, original):
    before = generated(policy)

    def dies_midway():
        chunks = weight_chunks(original, version=4, chunk_bytes=64 * 1024)
        for _ in range(3):
            yield next(chunks)
        raise RuntimeError("learner crashed")

    with pytest.raises(grpc.RpcError):
        policy.stub.UpdateWeights(dies_midway(), timeout=30)
    assert generated(policy) == before


def test_corrupt_chunk_fails_its_crc(policy, original):
    before = generated(policy)
    chunks = list(weight_chunks(eos_weights(original), version=3))
    chunks[0].data = bytes([chunks[0].data[0] ^ 0xFF]) + chunks[0].data[1:]
    error = refused(policy, chunks)
    assert error.code() == grpc.StatusCode.DATA_LOSS and "CRC" in error.details()
    assert generated(policy) == before


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"transformer.ln_f.bias": torch.zeros(64)}, "shape [64] does not match the model's [128]"),
        ({"transformer.ln_f.bias": torch.zeros(128, dtype=torch.float64)}, "dtype float64 does not match"),
        ({"transformer.h.9.ln_1.bias": torch.zeros(128)}, "unknown tensor name 'transformer.h.9.ln_1.bias'"),
    ],
)
def test_mismatched_tensor_is_refused_before_anything_changes(policy, original, tensors, message):
    before = generated(policy)
    # a valid tensor first, so a partial apply would show
    error = refused(policy, weight_chunks({**eos_weights(original), **tensors}, version=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    assert generated(policy) == before


@pytest.mark.parametrize("forged", [2**40, -1, 16 * 2**30, 511])
def test_a_forged_total_bytes_is_refused_before_any_allocation(policy, original, forged):
    import resource

    before = generated(policy)
    chunks = list(weight_chunks(eos_weights(original), version=7))
    chunks[0].total_bytes = forged  # ln_f.weight: 128 float32 values are 512 bytes
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    error = refused(policy, chunks)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"total_bytes {forged} is not 512" in error.details()
    model_bytes = sum(t.numel() * t.element_size() for t in original.values())
    assert grown < model_bytes, f"peak RSS grew by {grown} bytes, more than the model's {model_bytes}"
    assert generated(policy) == before


def test_a_stalled_stream_is_cut_by_the_stream_timeout_and_changes_nothing(tiny_model_dir, original):
    import time

    config = PolicyServiceConfig(model=str(tiny_model_dir), device="cpu", max_wait_ms=1, weights_stream_timeout=0.5)
    with (
        ServerThread(PolicyService(config), ServerOptions(port=0)) as port,
        PolicyClient(f"127.0.0.1:{port}") as policy,
    ):
        before = generated(policy)
        chunks = list(weight_chunks(eos_weights(original), version=9))

        def stalls():
            yield chunks[0]
            time.sleep(60)  # the sender hangs mid-stream
            yield from chunks[1:]

        start = time.monotonic()
        error = refused(policy, stalls())
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--weights-stream-timeout" in error.details()
        assert time.monotonic() - start < hang_guard(30)  # cut by the server, not by the sender finishing
        assert generated(policy) == before and policy.model_info().weights_version == 0
        policy.stub.UpdateWeights(iter(chunks), timeout=30)  # and the next push is taken
        assert policy.model_info().weights_version == 9


def test_no_generate_mixes_two_versions(policy, original):
    """Greedy output identifies the weights: each sample must match the version it reports."""
    expected = {0: generated(policy)[0]}
    stop, seen, errors = threading.Event(), [], []

    def keep_generating():
        while not stop.is_set():
            try:
                seen.extend(policy.generate([[5, 6, 7]] * 4, GREEDY))
            except grpc.RpcError as err:  # pragma: no cover - reported below
                errors.append(err)

    workers = [threading.Thread(target=keep_generating) for _ in range(3)]
    for w in workers:
        w.start()
    for version in range(1, 7):
        policy.update_weights(eos_weights(original) if version % 2 else original, version)
        expected[version] = [EOS] if version % 2 else expected[0]
    stop.set()
    for w in workers:
        w.join()
    assert not errors and len({s.weights_version for s in seen}) >= 2
    for s in seen:
        assert s.response_token_ids == expected[s.weights_version]


class WeightsOnlyLearner(learner_pb2_grpc.LearnerServicer):
    """A stand-in learner control API that only publishes weights (the real one lives in rlhf.learner)."""

    name = "learner"
    service_names = ("rlhf.v1.Learner",)

    def __init__(self, weights, version, release: threading.Event | None = None, stall_after: int | None = None):
        self.weights, self.version = weights, version
        self.release = release  # GetWeights waits for it, when given
        self.stall_after = stall_after  # GetWeights hangs after this many chunks, when given

    def add_to_server(self, server):
        learner_pb2_grpc.add_LearnerServicer_to_server(self, server)

    async def load(self):
        pass

    async def close(self):
        pass

    async def GetWeights(self, request, context):
        if self.release is not None:
            await asyncio.to_thread(self.release.wait, 30)
        for i, chunk in enumerate(weight_chunks(self.weights, self.version)):
            if i == self.stall_after:
                await asyncio.sleep(60)
            yield chunk


@pytest.mark.parametrize("engine", ENGINES)
def test_replica_started_mid_run_pulls_the_learners_weights(tiny_model_dir, original, engine, tmp_path):
    learner = WeightsOnlyLearner({**original, **eos_weights(original)}, version=12)
    with (
        ServerThread(learner, ServerOptions(port=0)) as learner_port,
        served_policy(engine, tiny_model_dir, tmp_path / "log", learner=f"127.0.0.1:{learner_port}") as served,
        PolicyClient(served.target) as policy,
    ):
        assert policy.model_info().weights_version == 12
        assert generated(policy) == ([EOS], 12)


def test_unreachable_learner_leaves_the_model_dir_weights_as_version_0(tiny_model_dir, port):
    config = PolicyServiceConfig(
        model=str(tiny_model_dir), device="cpu", learner=f"127.0.0.1:{port}", learner_timeout=2
    )
    with (
        ServerThread(PolicyService(config), ServerOptions(port=0)) as policy_port,
        PolicyClient(f"127.0.0.1:{policy_port}") as policy,
    ):
        assert generated(policy)[1] == 0


def test_a_stalled_weight_pull_is_cut_and_the_replica_serves_its_model_dir(tiny_model_dir, original):
    import time

    learner = WeightsOnlyLearner({**original, **eos_weights(original)}, version=5, stall_after=1)
    with ServerThread(learner, ServerOptions(port=0)) as learner_port:
        config = PolicyServiceConfig(
            model=str(tiny_model_dir),
            device="cpu",
            learner=f"127.0.0.1:{learner_port}",
            learner_timeout=300,
            weights_stream_timeout=1,
        )
        start = time.monotonic()
        with (
            ServerThread(PolicyService(config), ServerOptions(port=0)) as port,
            PolicyClient(f"127.0.0.1:{port}") as policy,
        ):
            assert time.monotonic() - start < 30  # the stall timeout ended the pull, not the 300 s overall one
            assert policy.model_info().weights_version == 0 and generated(policy)[1] == 0


def test_replica_still_loading_answers_unavailable_then_serves(tiny_model_dir, original, port):
    """The port opens before the model is ready; until then every RPC is UNAVAILABLE, which clients retry."""
    release = threading.Event()
    learner = WeightsOnlyLearner({**original, **eos_weights(original)}, version=2, release=release)
    with ServerThread(learner, ServerOptions(port=0)) as learner_port:
        config = PolicyServiceConfig(model=str(tiny_model_dir), device="cpu", learner=f"127.0.0.1:{learner_port}")
        server = ServerThread(PolicyService(config), ServerOptions(port=port))
        starting = threading.Thread(target=server.start)
        starting.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = policy_pb2_grpc.PolicyInferenceStub(channel)
                request = policy_pb2.GenerateRequest(prompts=[policy_pb2.Prompt(text="Hi")])
                for call in (
                    lambda: stub.Generate(request, timeout=30, wait_for_ready=True),
                    lambda: stub.GetModelInfo(GetModelInfoRequest(), timeout=30),
                ):
                    with pytest.raises(grpc.RpcError) as info:
                        call()
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
            release.set()
            starting.join(60)
            with PolicyClient(f"127.0.0.1:{port}") as policy:
                assert generated(policy) == ([EOS], 2)
        finally:
            release.set()
            server.stop()

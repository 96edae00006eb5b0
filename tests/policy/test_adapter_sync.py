"""Adapter-only weight sync: a LoRA stream (WeightsKind LORA) is merged into the replica's base weights, equals
the merged model's push, joins through GetWeights, and a stream that does not fit is refused with
INVALID_ARGUMENT while the previous version keeps serving."""

from __future__ import annotations

import copy

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.core.server import ServerOptions, ServerThread
from rlhf.core.training import TrainingOptions, lora_factors, prepare_model
from rlhf.core.types import GenerationParams
from rlhf.core.weights import LORA, weight_chunks, weights_kind
from rlhf.policy.client import PolicyClient
from rlhf.policy.service import PolicyService, PolicyServiceConfig
from tests.policy.test_update_weights import WeightsOnlyLearner

SAMPLING = GenerationParams(max_new_tokens=8, temperature=1.0, seed=7)
PROMPTS = [[5, 6, 7], [40, 41, 42, 43]]


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir):
    """A LoRA policy moved off its base by a few steps: its factors, and its merged weights."""
    torch.manual_seed(0)
    model = prepare_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), TrainingOptions(lora_r=4, lora_alpha=8), "causal-lm"
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    ids = torch.randint(3, 200, (4, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.clone() for k, v in lora_factors(model).items()}, copy.deepcopy(model).merge_and_unload().state_dict()


def serve(model_dir, **config):
    return ServerThread(
        PolicyService(PolicyServiceConfig(model=str(model_dir), device="cpu", max_wait_ms=1, **config)),
        ServerOptions(port=0),
    )


def samples(policy: PolicyClient):
    return [(s.response_token_ids, s.logprobs, s.weights_version) for s in policy.generate(PROMPTS, SAMPLING)]


def test_an_adapter_push_serves_what_the_merged_push_serves_in_a_fraction_of_the_bytes(tiny_model_dir, trained_adapter):
    factors, merged = trained_adapter
    assert weights_kind(factors) == LORA
    with (
        serve(tiny_model_dir) as a,
        serve(tiny_model_dir) as b,
        PolicyClient(f"127.0.0.1:{a}") as lora,
        PolicyClient(f"127.0.0.1:{b}") as full,
    ):
        before = samples(lora)
        adapter_reply, full_reply = lora.update_weights(factors, 3), full.update_weights(merged, 3)
        got, want = samples(lora), samples(full)
    assert adapter_reply.bytes_received < 0.2 * full_reply.bytes_received  # the tiny model: r 4 of 32 dims
    assert [g[0] for g in got] == [w[0] for w in want] and got != before
    for (_, lp_got, version), (_, lp_want, _) in zip(got, want, strict=True):
        assert version == 3
        torch.testing.assert_close(torch.tensor(lp_got), torch.tensor(lp_want), rtol=1e-4, atol=1e-4)


def test_a_second_push_replaces_the_first_instead_of_adding_to_it(tiny_model_dir, trained_adapter):
    factors, merged = trained_adapter
    zero = {k: torch.zeros_like(v) if k.endswith("lora_B") else v for k, v in factors.items()}
    with serve(tiny_model_dir) as port, PolicyClient(f"127.0.0.1:{port}") as policy:
        base = samples(policy)
        policy.update_weights(factors, 1)
        policy.update_weights(zero, 2)  # B = 0: back to the base weights exactly
        assert [s[:2] for s in samples(policy)] == [s[:2] for s in base]


def _refusal(policy: PolicyClient, chunks) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        policy.stub.UpdateWeights(iter(chunks), timeout=30)
    return info.value


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda f: {k: v for k, v in f.items() if not k.endswith("c_fc.lora_B")}, "lora_A and lora_B come together"),
        (lambda f: {**f, "transformer.h.0.nope.lora_A": next(iter(f.values()))}, "has no linear module"),
        (
            lambda f: {
                k: torch.zeros(v.shape[0], 2) if k.endswith("lora_B") else torch.zeros(2, v.shape[1])
                for k, v in f.items()
            },
            "adapter layout",
        ),  # rank 2 after a rank-4 adapter
        (lambda f: dict(list(f.items())[:2]), "adapter layout"),  # fewer modules than the adapter has
    ],
)
def test_a_push_that_does_not_fit_the_adapter_layout_is_refused_and_the_last_version_serves(
    tiny_model_dir, trained_adapter, tamper, message
):
    factors, _ = trained_adapter
    with serve(tiny_model_dir) as port, PolicyClient(f"127.0.0.1:{port}") as policy:
        policy.update_weights(factors, 1)
        served = samples(policy)
        error = _refusal(policy, weight_chunks(tamper(factors), 2))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
        assert samples(policy) == served and policy.model_info().weights_version == 1


def test_the_stream_says_its_kind_and_a_mismatch_is_refused(tiny_model_dir, trained_adapter):
    factors, merged = trained_adapter
    as_full = [c for c in weight_chunks(factors, 2)]
    for chunk in as_full:
        chunk.kind = 0  # LoRA factors claiming to be full weights
    as_lora = list(weight_chunks({"transformer.ln_f.bias": merged["transformer.ln_f.bias"]}, 2))
    for chunk in as_lora:
        chunk.kind = LORA  # a model tensor claiming to be a LoRA factor
    mixed = list(weight_chunks(factors, 2))
    mixed[1].kind = 0
    with serve(tiny_model_dir) as port, PolicyClient(f"127.0.0.1:{port}") as policy:
        for chunks, message in (
            (as_full, "unknown tensor name"),
            (as_lora, "not a LoRA factor"),
            (mixed, "mixes full weights and LoRA"),
        ):
            error = _refusal(policy, chunks)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
        assert policy.model_info().weights_version == 0


def test_a_replica_joining_mid_run_pulls_the_adapter_and_merges_it_into_its_model_dir(tiny_model_dir, trained_adapter):
    factors, merged = trained_adapter
    learner = WeightsOnlyLearner(copy.deepcopy(factors), version=6)
    with (
        ServerThread(learner, ServerOptions(port=0)) as learner_port,
        serve(tiny_model_dir, learner=f"127.0.0.1:{learner_port}") as port,
        serve(tiny_model_dir) as other,
        PolicyClient(f"127.0.0.1:{port}") as joined,
        PolicyClient(f"127.0.0.1:{other}") as full,
    ):
        full.update_weights(merged, 6)
        got, want = samples(joined), samples(full)
    assert [g[0] for g in got] == [w[0] for w in want] and all(g[2] == 6 for g in got)


def test_after_a_full_push_the_adapter_merges_into_the_model_dir_weights_again(tiny_model_dir, trained_adapter):
    factors, merged = trained_adapter
    with (
        serve(tiny_model_dir) as a,
        serve(tiny_model_dir) as b,
        PolicyClient(f"127.0.0.1:{a}") as policy,
        PolicyClient(f"127.0.0.1:{b}") as reference,
    ):
        policy.update_weights({k: v * 0.5 for k, v in merged.items() if v.is_floating_point()}, 1)  # another run
        policy.update_weights(factors, 2)  # a LoRA run starts: base = the model dir, not the last full push
        reference.update_weights(factors, 2)
        assert [s[0] for s in samples(policy)] == [s[0] for s in samples(reference)]

"""The vLLM engine against the transformers engine and the learner's own arithmetic, on a tiny GPT-2 and a tiny
Llama: greedy samples equal token for token, sampled-token log-probs equal the learner's recomputation, and after
a full or a LoRA push they equal the pushed weights'. The vLLM service is a separate process (tests.engines)."""

from __future__ import annotations

import grpc
import pytest
import torch

from rlhf.core.logprobs import response_logprobs_list
from rlhf.core.modeling import load_tokenizer
from rlhf.core.types import GenerationParams
from rlhf.core.weights import weight_chunks
from rlhf.policy.client import PolicyClient
from tests.engines import fresh_policy, needs_vllm, served_policy
from tests.policy.test_adapter_sync import trained_adapter  # noqa: F401 - a fixture

pytestmark = needs_vllm

PROMPTS = ["Human: Describe cats.\nAssistant:", [5, 6, 7], [40, 41, 42, 43, 44, 45, 46, 47]]
GREEDY = GenerationParams(max_new_tokens=16, temperature=0, ignore_eos=True)
SAMPLED = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=5, n=3)
TOLERANCE = 1e-4  # float32


@pytest.fixture(scope="module")
def tiny_llama_dir(tiny_model_dir, tmp_path_factory):
    """A randomly initialised Llama (RMSNorm, rotary positions, grouped-query attention, an untied head) with the
    tiny GPT-2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.core.modeling import save_model_dir

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,  # head_dim 32: vLLM's CPU attention has no kernel for 16
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return save_model_dir(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("models") / "tiny-llama")


def learner_logprobs(model_dir, samples, weights: dict[str, torch.Tensor] | None = None) -> list[list[float]]:
    """The learner's own recomputation (rlhf.core.logprobs), in float32, under `weights` (else the model dir's)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if weights is not None:
        model.load_state_dict(weights, strict=False)
    pad = load_tokenizer(model_dir).pad_token_id
    with torch.inference_mode():
        return response_logprobs_list(
            model, [s.prompt_token_ids for s in samples], [s.response_token_ids for s in samples], pad
        )


def assert_logprobs_close(samples, expected: list[list[float]]) -> None:
    for sample, want in zip(samples, expected, strict=True):
        torch.testing.assert_close(torch.tensor(sample.logprobs), torch.tensor(want), rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_and_vllm(request, tiny_model_dir, tmp_path_factory):
    """(model dir, the vLLM service on it): the session's process for GPT-2, a process of its own for Llama."""
    if request.param == "gpt2":
        with fresh_policy(request, "vllm", tiny_model_dir) as served:
            yield tiny_model_dir, served
        return
    model_dir = request.getfixturevalue("tiny_llama_dir")
    with served_policy("vllm", model_dir, tmp_path_factory.mktemp("vllm") / "llama.log") as served:
        yield model_dir, served


def test_greedy_samples_equal_the_transformers_engines_token_for_token(model_and_vllm):
    model_dir, vllm = model_and_vllm
    with (
        served_policy("hf", model_dir) as hf,
        PolicyClient(hf.target) as hf_policy,
        PolicyClient(vllm.target) as vllm_policy,
    ):
        want, got = hf_policy.generate(PROMPTS, GREEDY), vllm_policy.generate(PROMPTS, GREEDY)
    assert [s.response_token_ids for s in got] == [s.response_token_ids for s in want]
    assert [s.finish_reason for s in got] == ["length"] * len(PROMPTS)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), rtol=0, atol=TOLERANCE)


def test_sampled_token_logprobs_equal_the_learners_recomputation(model_and_vllm):
    model_dir, vllm = model_and_vllm
    with PolicyClient(vllm.target) as policy:
        samples = policy.generate(PROMPTS, SAMPLED)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len({tuple(s.response_token_ids) for s in samples[:3]}) > 1  # a seed per sample, not one shared
    assert_logprobs_close(samples, learner_logprobs(model_dir, samples))


def test_after_a_full_and_a_lora_push_logprobs_are_the_pushed_weights(request, tiny_model_dir, trained_adapter):  # noqa: F811
    factors, merged = trained_adapter
    other_run = {k: v * 0.9 for k, v in merged.items() if v.is_floating_point()}
    with fresh_policy(request, "vllm", tiny_model_dir) as served, PolicyClient(served.target) as policy:
        policy.update_weights(other_run, version=1)
        samples = policy.generate(PROMPTS, SAMPLED)
        assert {s.weights_version for s in samples} == {1}
        assert_logprobs_close(samples, learner_logprobs(tiny_model_dir, samples, other_run))
        # an adapter is relative to the model dir: served as model dir + B @ A, what the merged model holds
        policy.update_weights(factors, version=2)
        samples = policy.generate(PROMPTS, SAMPLED)
        assert {s.weights_version for s in samples} == {2}
        assert_logprobs_close(samples, learner_logprobs(tiny_model_dir, samples, merged))


def test_a_push_that_does_not_fit_is_refused_and_the_old_version_keeps_serving(
    request,
    tiny_model_dir,
    trained_adapter,  # noqa: F811
):
    factors, _ = trained_adapter
    rank_2 = {
        k: torch.zeros(v.shape[0], 2) if k.endswith("lora_B") else torch.zeros(2, v.shape[1])
        for k, v in factors.items()
    }
    with fresh_policy(request, "vllm", tiny_model_dir) as served, PolicyClient(served.target) as policy:
        policy.update_weights(factors, version=4)
        before = policy.generate(PROMPTS, SAMPLED)
        for refused, message in (
            (rank_2, "adapter layout"),
            ({"transformer.ln_f.bias": torch.zeros(64)}, "does not match the model's"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                policy.stub.UpdateWeights(weight_chunks(refused, 5), timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
        after = policy.generate(PROMPTS, SAMPLED)
        assert policy.model_info().weights_version == 4
    assert [(s.response_token_ids, s.logprobs, s.weights_version) for s in after] == [
        (s.response_token_ids, s.logprobs, s.weights_version) for s in before
    ]


def test_generation_stops_at_an_end_of_turn_id_as_the_hf_engine_does(tiny_model_dir, tmp_path):
    """The generation config's eos ids (like a chat template's end of turn) end a sample on both engines, the
    stop token kept as its last (rlhf.core.chat.stop_token_ids)."""
    import json
    import shutil

    with served_policy("hf", tiny_model_dir) as hf, PolicyClient(hf.target) as policy:
        (free,) = policy.generate([[5, 6, 7]], GREEDY)
    end_of_turn = free.response_token_ids[2]
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [load_tokenizer(model_dir).eos_token_id, end_of_turn]
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    stopping = GenerationParams(max_new_tokens=16, temperature=0)
    with (
        served_policy("hf", model_dir) as hf,
        served_policy("vllm", model_dir, tmp_path / "vllm.log") as vllm,
        PolicyClient(hf.target) as hf_policy,
        PolicyClient(vllm.target) as vllm_policy,
    ):
        (want,), (got,) = hf_policy.generate([[5, 6, 7]], stopping), vllm_policy.generate([[5, 6, 7]], stopping)
    assert want.response_token_ids[-1] == end_of_turn and len(want.response_token_ids) <= 3
    assert (
        (got.response_token_ids, got.finish_reason)
        == (want.response_token_ids, "eos")
        == (
            want.response_token_ids,
            want.finish_reason,
        )
    )

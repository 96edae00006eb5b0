"""PolicyInference on a real loopback server: Generate's samples, batching, seeds, and refusals."""

import math
import threading

import grpc
import pytest
import torch

from rlhf.core.modeling import load_tokenizer, tokenizer_fingerprint
from rlhf.core.text import encode_prompt
from rlhf.core.types import GenerationParams
from rlhf.policy.client import PolicyClient
from tests.engines import ENGINES, fresh_policy

PROMPTS = ["Human: Describe cats.\nAssistant:", [5, 6, 7], "Human: Tell me about rivers, please.\nAssistant:"]


@pytest.fixture(scope="module", params=ENGINES)
def served(request, tiny_model_dir):
    with fresh_policy(request, request.param, tiny_model_dir, max_wait_ms=100) as served:
        yield served


@pytest.fixture(scope="module")
def policy(served):
    with PolicyClient(served.target) as client:
        yield client


def test_generate_logprobs_equal_an_in_process_recomputation(policy, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    params = GenerationParams(max_new_tokens=12, temperature=0.8, top_p=0.9, top_k=50, seed=11, n=2)
    samples = policy.generate(PROMPTS, params)
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1, 2, 2]
    assert samples[0].prompt_token_ids == encode_prompt(tokenizer, PROMPTS[0])
    assert samples[2].prompt_token_ids == [5, 6, 7]
    with torch.inference_mode():
        for s in samples:
            ids = s.prompt_token_ids + s.response_token_ids
            logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            expected = [
                logits[len(s.prompt_token_ids) - 1 + t, tok].item() for t, tok in enumerate(s.response_token_ids)
            ]
            assert s.logprobs == pytest.approx(expected, abs=1e-5)
            assert s.weights_version == 0
            assert s.response_text == tokenizer.decode(s.response_token_ids, skip_special_tokens=True)
            ended_by_eos = s.response_token_ids[-1] == tokenizer.eos_token_id
            assert s.finish_reason == ("eos" if ended_by_eos else "length")
            assert ended_by_eos or len(s.response_token_ids) == 12
    assert samples[0].response_token_ids != samples[1].response_token_ids  # n samples differ


def _batched_rows(served) -> float:
    return served.metric("rlhf_batch_size_sum", {"service": "policy"})


def _batches(served) -> float:
    return served.metric("rlhf_batch_size_count", {"service": "policy"})


def test_same_seed_gives_the_same_samples_whatever_shares_the_batch(policy, served):
    params = GenerationParams(max_new_tokens=10, seed=3, n=2)
    alone = policy.generate(PROMPTS[:1], params)
    rows_before, batches_before = _batched_rows(served), _batches(served)
    results: dict[int, list] = {}

    def call(i: int) -> None:
        prompt = PROMPTS[:1] if i == 0 else [[10 + i] * i]  # others: different lengths and seeds
        results[i] = policy.generate(prompt, params if i == 0 else GenerationParams(max_new_tokens=10, seed=i, n=2))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows, batches = _batched_rows(served) - rows_before, _batches(served) - batches_before
    assert rows == 12 and batches < 6  # concurrent requests shared model batches
    assert [s.response_token_ids for s in results[0]] == [s.response_token_ids for s in alone]
    for a, b in zip(results[0], alone, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    reseeded = policy.generate(PROMPTS[:1], GenerationParams(max_new_tokens=10, seed=4, n=2))
    assert [s.response_token_ids for s in reseeded] != [s.response_token_ids for s in alone]


def test_temperature_zero_is_greedy(policy, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    (sample,) = policy.generate([[5, 6, 7]], GenerationParams(max_new_tokens=6, temperature=0, ignore_eos=True))
    ids = [5, 6, 7]
    with torch.inference_mode():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert sample.response_token_ids == ids[3:]


def test_model_info_describes_the_served_model(policy, tiny_model_dir):
    info = policy.model_info()
    assert info.model_name == tiny_model_dir.name and info.dtype == "float32" and info.device == "cpu"
    assert info.weights_version == 0 and info.max_context == 256 and info.vocab_size == 1024
    assert info.parameter_count > 100_000 and info.max_batch_size == 32
    assert info.tokenizer_fingerprint == tokenizer_fingerprint(load_tokenizer(tiny_model_dir))


BAD_REQUESTS = [
    ([], {}, "empty batch"),
    ([[5, 1024]], {}, "token id 1024 is outside the vocabulary"),
    ([[-1, 5]], {}, "token id -1 is outside the vocabulary"),
    ([""], {}, "prompt 0 is empty"),
    (["ok", []], {}, "prompt 1 is empty"),
    ([[5]], {"max_new_tokens": 0}, "max_new_tokens must be positive"),
    ([[5]], {"max_new_tokens": -3}, "max_new_tokens must be positive"),
    ([[5, 6, 7]], {"max_new_tokens": 254}, "beyond the model context of 256"),
    ([[5]], {"temperature": -0.5}, "temperature"),
    ([[5]], {"temperature": math.nan}, "temperature"),
    ([[5]], {"top_p": 0.0}, "top_p must lie in"),
    ([[5]], {"top_p": 1.5}, "top_p must lie in"),
    ([[5]], {"top_p": math.nan}, "top_p must lie in"),
    ([[5]], {"top_k": -1}, "top_k"),
    ([[5]], {"n": 2000}, "over the limit of 1024"),
]


@pytest.mark.parametrize(("prompts", "params", "message"), BAD_REQUESTS)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(policy, prompts, params, message):
    with pytest.raises(grpc.RpcError) as info:
        policy.generate(prompts, GenerationParams(**{"max_new_tokens": 4, **params}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert len(policy.generate([[5]], GenerationParams(max_new_tokens=2))[0].response_token_ids) <= 2

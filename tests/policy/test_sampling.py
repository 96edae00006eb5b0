"""The sampling loop: token choice by hand, left padding, seeds, and log-probs under the raw distribution."""

import math

import pytest
import torch

from rlhf.core.logprobs import response_logprobs
from rlhf.policy.sampling import SamplingSettings, choose_tokens, decode, pad_left, row_generator


def settings(**overrides) -> SamplingSettings:
    return SamplingSettings(
        **{"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "stop_at_eos": True, **overrides}
    )


# p = [0.5, 0.3, 0.2] over three tokens
LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))


@pytest.mark.parametrize(("uniform", "expected"), [(0.0, 0), (0.49, 0), (0.51, 1), (0.79, 1), (0.81, 2)])
def test_inverse_cdf_sampling_by_hand(uniform, expected):
    assert choose_tokens(LOGITS, settings(), torch.tensor([uniform])).item() == expected


@pytest.mark.parametrize(("uniform", "expected"), [(0.6, 0), (0.7, 1), (0.99, 1)])
def test_top_p_keeps_the_smallest_prefix_reaching_p(uniform, expected):
    # top_p 0.6 keeps {0, 1} (0.5 alone is short of 0.6), renormalised to [0.625, 0.375]
    assert choose_tokens(LOGITS, settings(top_p=0.6), torch.tensor([uniform])).item() == expected


def test_top_k_and_temperature_by_hand():
    assert choose_tokens(LOGITS, settings(top_k=1), torch.tensor([0.99])).item() == 0
    # temperature 0.5 squares then renormalises: [25, 9, 4] / 38; 0.70 * 38 = 26.6 falls in token 1's [25, 34)
    assert choose_tokens(LOGITS, settings(temperature=0.5), torch.tensor([0.70])).item() == 1
    assert choose_tokens(LOGITS, settings(temperature=0.5), torch.tensor([0.65])).item() == 0
    assert choose_tokens(torch.tensor([[0.1, 2.0, 1.9]]), settings(temperature=0), torch.tensor([0.0])).item() == 1


def test_pad_left_gives_every_row_positions_from_zero():
    ids, mask, positions = pad_left([[5, 6, 7], [8]], pad_id=1, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions[1, -1].item() == 0 and positions[0].tolist() == [0, 1, 2]


def test_row_generators_depend_only_on_seed_and_row():
    draw = lambda seed, row: torch.rand(4, generator=row_generator(seed, row)).tolist()  # noqa: E731
    assert draw(7, 3) == draw(7, 3)
    assert draw(7, 3) != draw(7, 4) and draw(7, 3) != draw(8, 3)
    assert draw(None, 0) != draw(None, 0)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_decoded_logprobs_are_the_raw_model_distribution(model):
    """Sampled with temperature and top-k, scored without: log_softmax of an unpadded full forward."""
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]
    generators = [row_generator(0, row) for row in range(3)]
    out = decode(model, prompts, generators, settings(temperature=0.7, top_k=20), eos_id=None, pad_id=1)
    assert all(len(o.token_ids) == 8 and o.finish_reason == "length" for o in out)
    with torch.inference_mode():
        for prompt, o in zip(prompts, out, strict=True):
            logits = model(torch.tensor([prompt + o.token_ids])).logits[0].float().log_softmax(-1)
            by_hand = [logits[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(o.token_ids)]
            assert o.logprobs == pytest.approx(by_hand, abs=1e-5)
        shared, _ = response_logprobs(model, prompts, [o.token_ids for o in out], pad_id=1)
    assert torch.allclose(shared, torch.tensor([o.logprobs for o in out]), atol=1e-5)


def test_a_row_samples_the_same_whatever_shares_its_batch(model):
    alone = decode(model, [[11, 12, 13]], [row_generator(5, 0)], settings(), eos_id=None, pad_id=1)[0]
    together = decode(
        model,
        [[1, 2, 3, 4, 5, 6, 7], [11, 12, 13]],
        [row_generator(9, 0), row_generator(5, 0)],
        settings(),
        eos_id=None,
        pad_id=1,
    )[1]
    assert alone.token_ids == together.token_ids
    assert alone.logprobs == pytest.approx(together.logprobs, abs=1e-5)


def test_eos_stops_a_row_and_is_kept(model):
    """With the final layer norm pointing at EOS's embedding, greedy decoding says EOS at once."""
    eos = 0
    with torch.no_grad():
        saved = model.transformer.ln_f.weight.clone(), model.transformer.ln_f.bias.clone()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(1000 * model.transformer.wte.weight[eos])
    try:
        stopped = decode(model, [[5, 6]], [row_generator(0, 0)], settings(temperature=0), eos_id=eos, pad_id=1)[0]
        ignored = decode(
            model, [[5, 6]], [row_generator(0, 0)], settings(temperature=0, stop_at_eos=False), eos_id=eos, pad_id=1
        )[0]
        held = decode(
            model, [[5, 6]], [row_generator(0, 0)], settings(temperature=0, min_new_tokens=3), eos_id=eos, pad_id=1
        )[0]
        sampled = decode(model, [[5, 6]], [row_generator(0, 0)], settings(min_new_tokens=3), eos_id=eos, pad_id=1)[0]
    finally:
        with torch.no_grad():
            model.transformer.ln_f.weight.copy_(saved[0])
            model.transformer.ln_f.bias.copy_(saved[1])
    assert stopped.token_ids == [eos] and stopped.finish_reason == "eos"
    assert ignored.token_ids == [eos] * 8 and ignored.finish_reason == "length"
    assert math.isclose(stopped.logprobs[0], 0.0, abs_tol=1e-4)
    # min_new_tokens: EOS (probability ~1) is held back for 3 tokens, then ends the response at once; the
    # held-back tokens' log-probs stay those of the raw distribution, where each is nearly impossible
    for out in (held, sampled):
        assert len(out.token_ids) == 4 and eos not in out.token_ids[:3] and out.token_ids[3] == eos
        assert out.finish_reason == "eos" and all(lp < -10 for lp in out.logprobs[:3]), out.logprobs


def test_an_end_of_turn_token_stops_a_row_as_eos_does(model):
    """Several stop ids (EOS and a chat template's end of turn, e.g. <|im_end|>): the first one drawn ends the
    row and is kept, so the learner's masks end the response there."""
    end_of_turn = 7
    with torch.no_grad():
        saved = model.transformer.ln_f.weight.clone(), model.transformer.ln_f.bias.clone()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(1000 * model.transformer.wte.weight[end_of_turn])
    try:
        stopped = decode(model, [[5, 6]], [row_generator(0, 0)], settings(temperature=0), eos_id=[0, 7], pad_id=1)[0]
        eos_only = decode(model, [[5, 6]], [row_generator(0, 0)], settings(temperature=0), eos_id=0, pad_id=1)[0]
    finally:
        with torch.no_grad():
            model.transformer.ln_f.weight.copy_(saved[0])
            model.transformer.ln_f.bias.copy_(saved[1])
    assert stopped.token_ids == [end_of_turn] and stopped.finish_reason == "eos"
    assert eos_only.token_ids == [end_of_turn] * 8 and eos_only.finish_reason == "length"

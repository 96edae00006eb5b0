"""Prompt/response encoding, truncation policy, and shared per-token log-probs."""

import torch

from rlhf.core.logprobs import gather_logprobs, response_logprobs, response_positions
from rlhf.core.text import truncate_left


def test_truncation_keeps_whole_response_and_end_of_prompt():
    enc = truncate_left([1, 2, 3, 4], [8, 9], max_length=4)
    assert enc.prompt_ids == [3, 4] and enc.response_ids == [8, 9] and enc.truncated
    assert truncate_left([1, 2], [8, 9], max_length=4).truncated is False
    too_long = truncate_left([1, 2], [5, 6, 7, 8, 9], max_length=3)
    assert too_long.prompt_ids == [] and too_long.response_ids == [7, 8, 9]


def test_response_positions_point_at_predecessor_logits():
    positions, mask = response_positions(torch.tensor([2, 3]), torch.tensor([3, 1]))
    # sequence 0: prompt of 2, response tokens at 2,3,4 predicted by logits 1,2,3
    # sequence 1: prompt of 3, one response token at 3 predicted by logits 2; the rest is padding
    assert positions.tolist() == [[1, 2, 3], [2, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_gather_logprobs_by_hand():
    # one sequence, vocab 2; logits [0, ln 3] give p = [1/4, 3/4]
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))]]])
    got = gather_logprobs(logits, torch.tensor([[0, 0]]), torch.tensor([[1, 0]]))
    expected = torch.log(torch.tensor([[0.75, 0.25]]))
    assert torch.allclose(got, expected, atol=1e-6)


def test_batched_logprobs_equal_one_at_a_time(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts, responses = [[5, 6, 7], [9], [10, 11]], [[12, 13], [14, 15, 16, 17], [18]]
    with torch.inference_mode():
        batched, mask = response_logprobs(model, prompts, responses, pad_id=1)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            logits = model(torch.tensor([p + r])).logits[0].float().log_softmax(-1)
            by_hand = torch.stack([logits[len(p) - 1 + j, tok] for j, tok in enumerate(r)])
            assert torch.allclose(batched[i, : len(r)], by_hand, atol=1e-5)
            assert mask[i].sum() == len(r)

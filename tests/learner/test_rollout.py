"""The rollout record: the sampler's log-probs, checked per replica and right-padded like the learner's."""

import pytest
import torch

from rlhf.core.types import Sample
from rlhf.learner.retries import ServiceDown
from rlhf.learner.rollout import check_sampler_logprobs, right_padded


def sample(response: list[int], logprobs: list[float]) -> Sample:
    return Sample([1, 2], response, logprobs, "eos", weights_version=0)


def test_sampler_logprobs_are_right_padded_like_the_learners():
    like = torch.full((2, 3), -9.0)
    out = right_padded([[-0.5], [-0.25, -1.0, -2.0]], like)
    assert torch.equal(out, torch.tensor([[-0.5, 0.0, 0.0], [-0.25, -1.0, -2.0]]))


def test_a_replica_with_one_logprob_missing_is_a_service_fault():
    check_sampler_logprobs("replica", [sample([5, 6], [-0.1, -0.2])])
    with pytest.raises(ServiceDown, match="returned 1 log-probs for 2 response tokens"):
        check_sampler_logprobs("replica", [sample([5, 6], [-0.1])])

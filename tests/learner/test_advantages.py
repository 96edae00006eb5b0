"""Critic-free estimators, loss aggregation and the KL-in-loss term, on tensors worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.learner import advantages as adv
from rlhf.learner import ppo

# Three prompts with unequal spread: {1, 2, 3}, {5, 5} (all equal), {0, 4}.
REWARDS = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 0.0, 4.0])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2, 2])
ONE_TOKEN = torch.ones(7, 1)


def test_group_statistics():
    assert adv.group_mean(REWARDS, GROUPS).tolist() == [2.0, 2.0, 2.0, 5.0, 5.0, 2.0, 2.0]
    # unbiased: {1,2,3}: sqrt((1 + 0 + 1) / 2) = 1; {5,5}: 0; {0,4}: sqrt((4 + 4) / 1) = 2.828427
    std = adv.group_std(REWARDS, GROUPS)
    assert std.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.0, 0.0, math.sqrt(8), math.sqrt(8)])
    # groups need not be contiguous or numbered from 0
    shuffled = adv.group_mean(torch.tensor([4.0, 1.0, 0.0, 3.0]), torch.tensor([9, 3, 9, 3]))
    assert shuffled.tolist() == [2.0, 2.0, 2.0, 2.0]


def test_grpo_normalises_within_each_group_and_an_equal_group_gets_zero():
    a = adv.grpo_advantages(REWARDS, GROUPS, ONE_TOKEN)[:, 0]
    eps = 1e-4
    expected = [-1 / (1 + eps), 0.0, 1 / (1 + eps), 0.0, 0.0, -2 / (math.sqrt(8) + eps), 2 / (math.sqrt(8) + eps)]
    assert a.tolist() == pytest.approx(expected, rel=1e-6)
    assert not torch.isnan(a).any()


def test_dr_grpo_keeps_the_reward_scale():
    a = adv.grpo_advantages(REWARDS, GROUPS, ONE_TOKEN, std_normalization=False)[:, 0]
    assert a.tolist() == [-1.0, 0.0, 1.0, 0.0, 0.0, -2.0, 2.0]


def test_rloo_subtracts_the_mean_of_the_others():
    a = adv.rloo_advantages(REWARDS, GROUPS, ONE_TOKEN)[:, 0]
    # {1,2,3}: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5; {5,5}: 0, 0; {0,4}: 0 - 4, 4 - 0
    assert a.tolist() == pytest.approx([-1.5, 0.0, 1.5, 0.0, 0.0, -4.0, 4.0])


def test_sequence_advantages_cover_every_real_token_and_no_padding():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    a = adv.rloo_advantages(torch.tensor([1.0, 3.0]), torch.tensor([0, 0]), mask)
    assert a.tolist() == [[-2.0, -2.0, 0.0], [2.0, 2.0, 2.0]]


# Two responses of 2 and 3 tokens, scores 1 and 2, per-token KL as below, beta 0.5, gamma 1.
PP_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
PP_KL = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.1, 0.3]])
PP_SCORES = torch.tensor([1.0, 2.0])


def whitened(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return [(v - mean) / std for v in values]


def test_reinforce_pp_whitens_the_returns_of_kl_penalised_token_rewards():
    a = adv.reinforce_pp_advantages(PP_SCORES, PP_KL, PP_MASK, kl_coef=0.5)
    # token rewards: row 0: -0.05, -0.1 + 1 = 0.9; row 1: 0, -0.05, -0.15 + 2 = 1.85
    # returns:       row 0: 0.85, 0.9;            row 1: 1.8, 1.8, 1.85
    expected = whitened([0.85, 0.9, 1.8, 1.8, 1.85])
    assert a[PP_MASK.bool()].tolist() == pytest.approx(expected, abs=1e-5)
    assert a[0, 2].item() == 0.0


def test_reinforce_pp_baseline_subtracts_the_group_mean_first():
    a = adv.reinforce_pp_advantages(PP_SCORES, PP_KL, PP_MASK, kl_coef=0.5, groups=torch.tensor([0, 0]))
    # scores -> -0.5, +0.5; returns: row 0: -0.65, -0.6; row 1: 0.3, 0.3, 0.35
    assert a[PP_MASK.bool()].tolist() == pytest.approx(whitened([-0.65, -0.6, 0.3, 0.3, 0.35]), abs=1e-5)


def test_discounted_returns():
    returns = adv.discounted_returns(torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[1.0, 1.0, 1.0]]), gamma=0.5)
    # G_2 = 4; G_1 = 2 + 0.5 * 4 = 4; G_0 = 1 + 0.5 * 4 = 3
    assert returns.tolist() == [[3.0, 4.0, 4.0]]


def test_critic_free_dispatch_puts_the_sequence_kl_into_grpo_and_rloo_rewards():
    kl = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    mask = torch.ones(2, 2)
    # r - beta * sum KL with beta 1: 3 - 1 = 2 and 3 - 2 = 1; RLOO: 2 - 1 = +1, 1 - 2 = -1
    a = adv.critic_free_advantages("rloo", torch.tensor([3.0, 3.0]), kl, mask, torch.tensor([0, 0]), kl_coef=1.0)
    assert a.tolist() == [[1.0, 1.0], [-1.0, -1.0]]
    # with the KL in the loss (kl_coef 0 here), equal scores carry no signal
    a = adv.critic_free_advantages("grpo", torch.tensor([3.0, 3.0]), kl, mask, torch.tensor([0, 0]), kl_coef=0.0)
    assert a.tolist() == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        adv.critic_free_advantages("gae", torch.tensor([3.0]), kl[:1], mask[:1], torch.tensor([0]), 0.0)


def test_loss_aggregations():
    per_token = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # token-mean: (1 + 2 + 3 + 4 + 5) / 5 = 3
    assert ppo.aggregate_loss(per_token, mask, "token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-mean: (1.5 + 4) / 2 = 2.75
    assert ppo.aggregate_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx(2.75)
    # seq-mean-token-sum: (3 + 12) / 2 = 7.5
    assert ppo.aggregate_loss(per_token, mask, "seq-mean-token-sum").item() == pytest.approx(7.5)
    # an empty response (all padding) is not a sequence to average over
    padded = torch.cat([mask, torch.zeros(1, 3)])
    assert ppo.aggregate_loss(
        torch.cat([per_token, torch.ones(1, 3)]), padded, "seq-mean-token-mean"
    ).item() == pytest.approx(2.75)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        ppo.aggregate_loss(per_token, mask, "sum")


def test_clipped_policy_loss_uses_the_aggregation():
    advantages = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    zeros = torch.zeros(2, 3)
    # ratio 1 everywhere: per-token loss = -A; seq-mean-token-sum: (-2 + -6) / 2 = -4
    loss, _, _ = ppo.clipped_policy_loss(zeros, zeros, advantages, mask, 0.2, aggregation="seq-mean-token-sum")
    assert loss.item() == pytest.approx(-4.0)


def test_kl_loss_is_beta_times_k3_and_differentiates_through_the_policy():
    logprobs = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    loss = ppo.kl_loss(logprobs, ref, torch.ones(1, 2), kl_coef=0.2, estimator="k3")
    # r = pi_ref / pi: 0.5 and 2; k3 = r - 1 - log r: 0.193147 and 0.306853; mean 0.25; x 0.2 = 0.05
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    loss.backward()
    # d k3 / d log pi = 1 - r: 0.5 and -1, times beta / 2 tokens = 0.1
    assert logprobs.grad[0].tolist() == pytest.approx([0.05, -0.1], abs=1e-6)


def test_ratio_corrected_kl_loss_has_the_reverse_kl_gradient():
    logprobs = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    loss = ppo.kl_loss(logprobs, ref, torch.ones(1, 2), kl_coef=0.2, estimator="k3", old_logprobs=logprobs.detach())
    # on-policy the ratio is 1: the same value as k3's, 0.05
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    loss.backward()
    # d (ratio * k3) / d log pi at ratio 1 = k3 + 1 - r = log(pi / pi_ref): log 2 and -log 2, times beta / 2
    assert logprobs.grad[0].tolist() == pytest.approx([0.1 * 0.693147, -0.1 * 0.693147], abs=1e-6)


def test_ratio_corrected_kl_loss_off_policy_weighs_each_token_by_its_ratio():
    logprobs = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.5]]))  # ratios 2 and 0.5
    loss = ppo.kl_loss(logprobs, ref, torch.ones(1, 2), kl_coef=0.2, estimator="k3", old_logprobs=old)
    # (2 * 0.193147 + 0.5 * 0.306853) / 2 * 0.2
    assert loss.item() == pytest.approx((2 * 0.193147 + 0.5 * 0.306853) / 2 * 0.2, abs=1e-6)

"""PPO math on tiny tensors whose expected values are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.learner import ppo

# Two responses: row 0 has 3 tokens, row 1 has 2 tokens and one pad.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_masked_mean_and_whiten_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    # real entries 1, 2, 3, 4, 5 -> mean 3
    assert ppo.masked_mean(x, MASK).item() == pytest.approx(3.0)
    # unbiased variance: (4 + 1 + 0 + 1 + 4) / (5 - 1) = 2.5
    assert ppo.masked_var(x, MASK).item() == pytest.approx(2.5)
    w = ppo.whiten(x, MASK)
    # (x - 3) / sqrt(2.5): 1 -> -1.26491, 5 -> +1.26491; the pad becomes 0
    assert w[0, 0].item() == pytest.approx(-2 / math.sqrt(2.5), rel=1e-5)
    assert w[1, 1].item() == pytest.approx(2 / math.sqrt(2.5), rel=1e-5)
    assert w[1, 2].item() == 0.0
    # shift_mean=False keeps the mean: 1 -> -1.26491 + 3
    unshifted = ppo.whiten(x, MASK, shift_mean=False)
    assert unshifted[0, 0].item() == pytest.approx(3 - 2 / math.sqrt(2.5), rel=1e-5)


def test_kl_penalized_rewards_k1_adds_score_at_last_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -0.5, -9.0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = ppo.kl_penalized_rewards(scores, logprobs, ref_logprobs, MASK, kl_coef=0.1)
    # k1 = logp - ref: row 0: 0.5, -1.0, 0.0; row 1: 1.0, -0.5, (pad) 0
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, -0.5, 0.0]]))
    # r = -0.1 * kl; score at last real token: row 0 t=2: 0 + 2.0; row 1 t=1: 0.05 - 1.0
    expected = torch.tensor([[-0.05, 0.1, 2.0], [-0.1, -0.95, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_kl_estimate_k3_is_nonnegative_and_matches_formula():
    logprobs = torch.tensor([[-1.0, -2.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0]])
    k3 = ppo.kl_estimate(logprobs, ref_logprobs, "k3")
    # r = exp(ref - logp): t0: exp(-0.5) = 0.606531 -> 0.606531 - 1 + 0.5 = 0.106531
    #                      t1: exp(1.0) = 2.718282 -> 2.718282 - 1 - 1.0 = 0.718282
    assert torch.allclose(k3, torch.tensor([[0.106531, 0.718282]]), atol=1e-6)
    with pytest.raises(ValueError, match="k2"):
        ppo.kl_estimate(logprobs, ref_logprobs, "k2")


def test_penalize_missing_eos_only_hits_truncated_responses():
    scores = torch.tensor([1.0, 1.0])
    out = ppo.penalize_missing_eos(scores, torch.tensor([True, False]), penalty=0.75)
    assert out.tolist() == [1.0, 0.25]


def test_gae_hand_computed_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 7.0]])  # the 7.0 sits on padding
    values = torch.tensor([[0.5, 0.4, 0.3], [1.0, 1.0, 9.0]])  # so does the 9.0
    gamma, lam = 0.9, 0.5
    adv, ret = ppo.gae_advantages(rewards, values, MASK, gamma, lam)
    # row 0 (3 tokens, terminal after t=2):
    #   d2 = 1.0 + 0 - 0.3 = 0.7                  A2 = 0.7
    #   d1 = 0 + 0.9*0.3 - 0.4 = -0.13            A1 = -0.13 + 0.45*0.7 = 0.185
    #   d0 = 0 + 0.9*0.4 - 0.5 = -0.14            A0 = -0.14 + 0.45*0.185 = -0.05675
    # row 1 (2 tokens, the pad must not leak):
    #   d1 = 2.0 + 0 - 1.0 = 1.0                  A1 = 1.0
    #   d0 = 0.5 + 0.9*1.0 - 1.0 = 0.4            A0 = 0.4 + 0.45*1.0 = 0.85
    expected_adv = torch.tensor([[-0.05675, 0.185, 0.7], [0.85, 1.0, 0.0]])
    assert torch.allclose(adv, expected_adv, atol=1e-6)
    # returns = A + V on real tokens
    expected_ret = torch.tensor([[0.44325, 0.585, 1.0], [1.85, 2.0, 0.0]])
    assert torch.allclose(ret, expected_ret, atol=1e-6)


def test_gae_gamma_one_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = ppo.gae_advantages(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    # Monte Carlo: returns-to-go 6, 5, 3
    assert ret.tolist() == [[6.0, 5.0, 3.0]]
    assert adv.tolist() == [[5.5, 4.5, 2.5]]


def test_clipped_policy_loss_hand_computed():
    # ratios exp(logp - old): 1.5, 0.5, 1.0 (and a pad)
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.0, 3.0]]))
    advantages = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clipfrac, approxkl = ppo.clipped_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # t0: A=1,  r=1.5: -1.5 vs -clip(1.5)=-1.2 -> max = -1.2 (clipped)
    # t1: A=1,  r=0.5: -0.5 vs -0.8           -> max = -0.5 (not clipped: pessimistic side)
    # t2: A=-2, r=1.0: 2.0 vs 2.0             -> 2.0
    # mean = (-1.2 - 0.5 + 2.0) / 3 = 0.1
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3, abs=1e-6)
    # approxkl = mean((r - 1) - log r) = ((0.5 - 0.405465) + (-0.5 + 0.693147) + 0) / 3 = 0.095894
    assert approxkl.item() == pytest.approx(0.095894, abs=1e-6)


def test_clipped_policy_loss_gradient_vanishes_when_clipped():
    logprobs = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, _, _ = ppo.clipped_policy_loss(logprobs, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss.backward()
    assert logprobs.grad.item() == 0.0


def test_clipped_value_loss_hand_computed():
    old_values = torch.tensor([[1.0, 1.0, 0.0]])
    values = torch.tensor([[1.5, 0.9, 4.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, vf_clipfrac = ppo.clipped_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    # t0: V=1.5 -> (1.5-2)^2 = 0.25; V_clip = 1.2 -> (1.2-2)^2 = 0.64; max 0.64 (clipped wins)
    # t1: V=0.9 -> 0.81; V_clip = 0.9 -> 0.81; max 0.81
    # loss = 0.5 * (0.64 + 0.81) / 2 = 0.3625
    assert loss.item() == pytest.approx(0.3625, abs=1e-6)
    assert vf_clipfrac.item() == pytest.approx(0.5)


def test_ptx_loss_is_negative_scaled_mean_logprob():
    logprobs = torch.tensor([[-1.0, -3.0], [-2.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # mean over real tokens: (-1 - 3 - 2) / 3 = -2; loss = -gamma * (-2) with gamma = 0.5 -> 1.0
    assert ppo.ptx_loss(logprobs, mask, ptx_coef=0.5).item() == pytest.approx(1.0)


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]])
    # uniform over 4 -> ln 4 = 1.386294; one-hot -> 0
    assert torch.allclose(ppo.entropy_from_logits(logits), torch.tensor([math.log(4), 0.0]), atol=1e-6)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert ppo.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    # a constant critic at the mean explains nothing
    assert ppo.explained_variance(torch.full((1, 4), 2.5), returns, mask).item() == pytest.approx(0.0)
    # residuals 0.5, -0.5, 0.5, -0.5: var 1/3 vs Var(R) = 5/3 -> 1 - 0.2 = 0.8
    values = returns + torch.tensor([[-0.5, 0.5, -0.5, 0.5]])
    assert ppo.explained_variance(values, returns, mask).item() == pytest.approx(0.8, abs=1e-6)


def test_adaptive_kl_controller_hand_computed():
    ctl = ppo.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    # KL 9 vs target 6: error 0.5 clipped to 0.2; n=256: 0.1 * (1 + 0.2 * 256/10000) = 0.100512
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.100512)
    # KL 4.5: error -0.25 clipped to -0.2; n=1000: 0.100512 * (1 - 0.02) = 0.09850176
    ctl.update(current_kl=4.5, n_steps=1000)
    assert ctl.value == pytest.approx(0.09850176)
    # inside the band: KL 6.6 -> error 0.1; n=5000: * 1.05 = 0.103426848
    ctl.update(current_kl=6.6, n_steps=5000)
    assert ctl.value == pytest.approx(0.103426848)


def test_fixed_kl_controller_never_moves():
    ctl = ppo.FixedKLController(value=0.05)
    ctl.update(current_kl=100.0, n_steps=10**6)
    assert ctl.value == 0.05

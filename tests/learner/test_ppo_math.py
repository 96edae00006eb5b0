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


# A stale batch: a replica drew these tokens at weights version 3 (the behaviour policy); the learner is at
# version 5, and its log-probs at the start of the update are the proximal policy's; the update has moved on.
BEHAVIOUR = torch.log(torch.tensor([[0.2, 0.5, 0.25, 0.9]]))  # pi_behav(y_t), version 3
PROXIMAL = torch.log(torch.tensor([[0.6, 0.4, 0.5, 0.9]]))  # pi_prox(y_t), version 5 at the update's start
CURRENT = torch.log(torch.tensor([[0.9, 0.2, 0.5, 0.1]]))  # pi_theta(y_t), a few minibatches into the update
STALE_ADVANTAGES = torch.tensor([[1.0, 1.0, -2.0, 7.0]])
STALE_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding


def test_truncated_importance_weights_of_a_stale_batch():
    weights = ppo.truncated_importance_weights(PROXIMAL, BEHAVIOUR, cap=2.0)
    # pi_prox / pi_behav: 0.6/0.2 = 3 -> truncated to the cap 2; 0.4/0.5 = 0.8; 0.5/0.25 = 2 (at the cap); 1
    assert torch.allclose(weights, torch.tensor([[2.0, 0.8, 2.0, 1.0]]), atol=1e-6)


def test_decoupled_policy_loss_on_a_stale_batch():
    logprobs = CURRENT.clone().requires_grad_()
    weights = ppo.truncated_importance_weights(PROXIMAL, BEHAVIOUR, cap=2.0)
    loss, clipfrac, approxkl = ppo.clipped_policy_loss(
        logprobs, PROXIMAL, STALE_ADVANTAGES, STALE_MASK, clip_range=0.2, importance_weights=weights
    )
    # r = pi_theta / pi_prox, the clip around the proximal policy (not the behaviour one):
    # t0: r = 0.9/0.6 = 1.5, A = 1:  -min(1.5, clip 1.2) = -1.2 (clipped), times w 2   -> -2.4
    # t1: r = 0.2/0.4 = 0.5, A = 1:  -min(0.5, clip 0.8) = -0.5 (not clipped), times w 0.8 -> -0.4
    # t2: r = 0.5/0.5 = 1.0, A = -2: -min(-2, -2) = 2.0, times w 2                     -> 4.0
    # token mean over the 3 real tokens: (-2.4 - 0.4 + 4.0) / 3 = 0.4
    assert loss.item() == pytest.approx(0.4, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3, abs=1e-6)
    # approxkl = mean((r - 1) - log r) = ((0.5 - 0.405465) + (-0.5 + 0.693147) + 0) / 3 = 0.095894
    assert approxkl.item() == pytest.approx(0.095894, abs=1e-6)
    # d loss / d log pi_theta = -w A r / 3 where unclipped, 0 where clipped:
    # t0 clipped -> 0; t1: -0.8 * 1 * 0.5 / 3 = -0.133333; t2: -2 * -2 * 1 / 3 = 1.333333; the pad 0
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.4 / 3, 4 / 3, 0.0]]), atol=1e-6)


def test_decoupled_policy_loss_is_not_clipped_around_the_behaviour_policy():
    # Around the behaviour policy t0's ratio would be 0.9/0.2 = 4.5: clipped at 1.2, term -1.2 with weight 1.
    # Around the proximal one it is 1.5 (clipped too), weighted 2: -2.4. The two objectives differ.
    weights = ppo.truncated_importance_weights(PROXIMAL, BEHAVIOUR, cap=2.0)
    one_token = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    decoupled, _, _ = ppo.clipped_policy_loss(CURRENT, PROXIMAL, STALE_ADVANTAGES, one_token, 0.2, weights)
    naive, _, _ = ppo.clipped_policy_loss(CURRENT, BEHAVIOUR, STALE_ADVANTAGES, one_token, 0.2)
    assert decoupled.item() == pytest.approx(-2.4, abs=1e-6)
    assert naive.item() == pytest.approx(-1.2, abs=1e-6)


def test_decoupled_policy_loss_on_policy_is_plain_ppo():
    # behaviour == proximal (lockstep, float32 replicas): every weight is exp(0) = 1
    weights = ppo.truncated_importance_weights(PROXIMAL, PROXIMAL, cap=2.0)
    assert torch.equal(weights, torch.ones_like(weights))
    weighted, _, _ = ppo.clipped_policy_loss(CURRENT, PROXIMAL, STALE_ADVANTAGES, STALE_MASK, 0.2, weights)
    plain, _, _ = ppo.clipped_policy_loss(CURRENT, PROXIMAL, STALE_ADVANTAGES, STALE_MASK, 0.2)
    assert weighted.item() == pytest.approx(plain.item(), abs=1e-7)


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

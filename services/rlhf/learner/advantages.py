"""Critic-free advantage estimators, as small pure functions over a batch of groups.

A step samples n responses per prompt; `groups` (B,) holds each sample's prompt number, so the n
samples of one prompt form a group. `rewards` are sequence-level (B,) unless a name says per-token
(B, T), and `mask` is (B, T), 1.0 on response tokens. Every estimator returns (B, T) advantages,
zero on padding, that go into the same clipped objective as PPO's (rlhf.learner.ppo).

    GRPO          (r_i - mean_g r) / (std_g r + eps)           Shao et al. 2024 (DeepSeekMath)
    Dr. GRPO      r_i - mean_g r                               Liu et al. 2025 (no std normalisation)
    RLOO          r_i - mean_{j in g, j != i} r_j              Ahmadian et al. 2024
    REINFORCE++   whiten_batch(sum_{s >= t} gamma^(s-t) r_s)   Hu 2025 (per-token KL in r_s)
      -baseline   the same, with r(x, y) - mean_g r(x, y) first
"""

from __future__ import annotations

from typing import get_args

import torch

from rlhf.learner import ppo
from rlhf.learner.config import Estimator

ESTIMATORS = get_args(Estimator)


def group_sizes(groups: torch.Tensor) -> torch.Tensor:
    """(B,) how many samples share each sample's group."""
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return counts[inverse].to(torch.float32)


def group_mean(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B,) the mean of x over each sample's group."""
    _, inverse = torch.unique(groups, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    return sums[inverse] / group_sizes(groups).to(x.dtype)


def group_std(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B,) the unbiased standard deviation of x over each sample's group (as torch.std; 0 for a group of 1)."""
    n = group_sizes(groups).to(x.dtype)
    squares = (x - group_mean(x, groups)) ** 2
    return torch.sqrt(group_mean(squares, groups) * n / (n - 1).clamp(min=1.0))


def per_token(advantage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, T): every token of a response gets its sequence's advantage."""
    return advantage[:, None] * mask


def grpo_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor, std_normalization: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO: each reward relative to its group's mean, in units of the group's std (Dr. GRPO without).
    A group whose rewards are all equal gets advantage 0."""
    advantage = rewards - group_mean(rewards, groups)
    if std_normalization:
        advantage = advantage / (group_std(rewards, groups) + eps)
    return per_token(advantage, mask)


def rloo_advantages(rewards: torch.Tensor, groups: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RLOO: each reward minus the mean of the other samples of its prompt, n/(n-1) (r_i - mean_g r)."""
    n = group_sizes(groups).to(rewards.dtype)
    baseline = (group_mean(rewards, groups) * n - rewards) / (n - 1).clamp(min=1.0)
    return per_token(rewards - baseline, mask)


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s-t) r_s within each response; (B, T), zero on padding."""
    token_rewards = token_rewards * mask
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in reversed(range(token_rewards.size(1))):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def reinforce_pp_advantages(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    gamma: float = 1.0,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """REINFORCE++: returns of the per-token rewards (-beta KL_t, plus the score at the last token),
    whitened over the whole batch. With groups (REINFORCE++-baseline), each score first loses its
    group's mean. kl is (B, T), per token; pass kl_coef 0 when the KL goes into the loss instead."""
    if groups is not None:
        scores = scores - group_mean(scores, groups)
    token_rewards = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    token_rewards[torch.arange(len(scores)), last] += scores
    return ppo.whiten(discounted_returns(token_rewards, mask, gamma), mask)


def critic_free_advantages(
    estimator: str,
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor,
    kl_coef: float,
    gamma: float = 1.0,
    std_normalization: bool = True,
) -> torch.Tensor:
    """The advantages of one critic-free estimator. kl (B, T) is the per-token KL estimate; kl_coef is
    its weight in the reward (0 when --kl-in loss). GRPO and RLOO see it as a sequence total."""
    if estimator in ("reinforce++", "reinforce++-baseline"):
        return reinforce_pp_advantages(
            scores, kl, mask, kl_coef, gamma, groups if estimator == "reinforce++-baseline" else None
        )
    rewards = scores - kl_coef * (kl * mask).sum(dim=1)  # r(x, y) - beta KL(x, y)
    if estimator == "grpo":
        return grpo_advantages(rewards, groups, mask, std_normalization)
    if estimator == "rloo":
        return rloo_advantages(rewards, groups, mask)
    raise ValueError(f"unknown advantage estimator {estimator!r} (choose one of {', '.join(ESTIMATORS)})")

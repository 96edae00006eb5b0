"""PPO for language models, as small pure functions (Ziegler et al. 2019; Ouyang et al. 2022).

Every response tensor is (B, T): one row per sample, right-padded to the longest response,
with `mask` 1.0 on real response tokens and 0.0 on padding. Reading order follows the algorithm:
per-token rewards with the KL penalty -> GAE advantages -> whitening -> policy and value losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of x over the positions where mask is 1."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    # Bessel's correction, as the whitening in the PPO reference implementations does.
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1.0)


LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


@dataclass(frozen=True)
class Totals:
    """The response tokens and the non-empty responses of a whole minibatch, over all its micro-batches and
    ranks: the denominators that make the sum of the pieces' losses exactly the minibatch's loss, so that
    gradient accumulation and data parallelism compute the one-process, one-batch update."""

    tokens: float
    sequences: float

    @classmethod
    def of(cls, mask: torch.Tensor) -> Totals:
        return cls(float(mask.sum()), float((mask.sum(dim=1) > 0).sum()))


def masked_share(x: torch.Tensor, mask: torch.Tensor, tokens: float | None = None) -> torch.Tensor:
    """sum of x over the mask / `tokens` (default: the mask's own count, i.e. masked_mean)."""
    return (x * mask).sum() / max(float(mask.sum()) if tokens is None else tokens, 1.0)


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, aggregation: str = "token-mean", totals: Totals | None = None
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar; with `totals`, this piece's share of the whole minibatch's.

    token-mean            sum over all tokens / number of tokens (long responses weigh more)
    seq-mean-token-mean   each response's token mean, then the mean over responses (GRPO's paper)
    seq-mean-token-sum    each response's token sum, then the mean over responses
    """
    totals = totals or Totals.of(mask)
    if aggregation == "token-mean":
        return masked_share(per_token, mask, totals.tokens)
    sums, lengths = (per_token * mask).sum(dim=1), mask.sum(dim=1)
    rows = (lengths > 0).to(per_token.dtype)  # an empty response has no tokens to weigh
    if aggregation == "seq-mean-token-mean":
        per_sequence = sums / lengths.clamp(min=1.0)
    elif aggregation == "seq-mean-token-sum":
        per_sequence = sums
    else:
        raise ValueError(f"unknown loss aggregation {aggregation!r} (choose one of {', '.join(LOSS_AGGREGATIONS)})")
    return (per_sequence * rows).sum() / max(totals.sequences, 1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale x to unit variance over the mask (and zero mean unless shift_mean=False); padding -> 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi_RL || pi_SFT) from samples of pi_RL (Schulman's k1 or k3)."""
    logratio = logprobs - ref_logprobs  # log pi_RL/pi_SFT
    if estimator == "k1":
        return logratio
    if estimator == "k3":
        # (r - 1) - log r with r = pi_SFT/pi_RL: unbiased and always >= 0, lower variance than k1.
        return torch.expm1(-logratio) + logratio
    raise ValueError(f"unknown KL estimator {estimator!r} (choose k1 or k3)")


def penalize_missing_eos(scores: torch.Tensor, ended_with_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract `penalty` from the score of every response that stopped at the length limit."""
    return scores - penalty * (~ended_with_eos).to(scores.dtype)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -beta * KL_t, plus the sequence score at the last response token.

    Returns (rewards, kl), both (B, T) and zero on padding.
    """
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each response; the episode ends at its last token.

    Returns (advantages, returns), (B, T), zero on padding.
    """
    # Zero rewards and values past the end: there every delta is 0, so no advantage leaks
    # back across padding and the value after the last token counts as 0 (terminal).
    rewards, values = rewards * mask, values * mask
    lastgaelam = torch.zeros_like(rewards[:, 0])
    advantages_reversed = []
    T = rewards.shape[1]
    for t in reversed(range(T)):
        nextvalues = values[:, t + 1] if t + 1 < T else torch.zeros_like(lastgaelam)
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    returns = (advantages + values) * mask
    return advantages, returns


def policy_ratio(logprobs: torch.Tensor, prox_logprobs: torch.Tensor) -> torch.Tensor:
    """r_t = pi_theta(y_t) / pi_prox(y_t): how far the update has moved from the proximal policy, the learner's
    own weights at the start of the update (PPO's "old" policy)."""
    return torch.exp(logprobs - prox_logprobs)


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """-min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) per token: PPO's pessimistic bound, as a loss."""
    return torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range))


def truncated_importance_weights(
    prox_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, cap: float
) -> torch.Tensor:
    """w_t = min(pi_prox(y_t) / pi_behav(y_t), cap): the correction for samples drawn by a behaviour policy other
    than the proximal one (weights some versions stale, with --rollout-ahead; or a bfloat16 replica of float32
    ones). Truncated importance sampling (Ionides 2008; for RL-for-LLM samplers, Yao et al. 2025)."""
    return torch.exp(prox_logprobs - behaviour_logprobs).clamp(max=cap)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    prox_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    importance_weights: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    totals: Totals | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoupled PPO objective (Hilton et al. 2022; AReaL, Fu et al. 2025), as a loss:

        L = aggregate_t  w_t * -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)

    with r_t = policy_ratio (the clip is taken around the proximal policy, not the behaviour policy that drew
    the sample) and w_t = truncated_importance_weights, constants (no gradient flows through them; without
    them, w_t = 1: plain PPO). The terms are reduced by `aggregation` (aggregate_loss; with `totals`, as this
    piece's share of the minibatch's). Returns (loss, clipfrac, approxkl)."""
    ratio = policy_ratio(logprobs, prox_logprobs)
    per_token = clipped_surrogate(ratio, advantages, clip_range)
    with torch.no_grad():
        tokens = totals.tokens if totals is not None else None
        clipfrac = masked_share((per_token > -advantages * ratio).float(), mask, tokens)  # the clipped side won
        logratio = logprobs - prox_logprobs
        approxkl = masked_share((ratio - 1) - logratio, mask, tokens)  # k3 estimate of KL(prox || new)
    if importance_weights is not None:
        per_token = importance_weights.detach() * per_token
    loss = aggregate_loss(per_token, mask, aggregation, totals)
    return loss, clipfrac, approxkl


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k3",
    aggregation: str = "token-mean",
    totals: Totals | None = None,
    old_logprobs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The KL penalty as a loss term (GRPO's): beta * aggregate(KL_t), differentiated through log pi_RL.

    With `old_logprobs` (those the samples were drawn at), each KL_t is weighted by the ratio pi_RL/pi_old,
    kept in the graph. Its value is 1 on-policy, but its gradient adds KL_t * grad log pi_RL: for k3 the
    gradient becomes log(pi_RL/pi_SFT) * grad log pi_RL, the unbiased gradient of KL(pi_RL || pi_SFT). Without
    it, k3's own gradient (1 - pi_SFT/pi_RL) * grad log pi_RL is, on average, that of the forward
    KL(pi_SFT || pi_RL) (Tang & Munos 2025; DeepSeek-V3.2's unbiased KL estimate)."""
    kl = kl_estimate(logprobs, ref_logprobs, estimator)
    if old_logprobs is not None:
        kl = torch.exp(logprobs - old_logprobs) * kl
    return kl_coef * aggregate_loss(kl, mask, aggregation, totals)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
    tokens: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within clip_range of the old value, averaged over the
    tokens (with `tokens`: this piece's share of a minibatch of that many). Returns (loss, value clipfrac).
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf_losses = (values - returns) ** 2
    vf_losses2 = (values_clipped - returns) ** 2
    loss = 0.5 * masked_share(torch.max(vf_losses, vf_losses2), mask, tokens)
    with torch.no_grad():
        vf_clipfrac = masked_share((vf_losses2 > vf_losses).float(), mask, tokens)
    return loss, vf_clipfrac


def ptx_loss(logprobs: torch.Tensor, mask: torch.Tensor, ptx_coef: float, tokens: float | None = None) -> torch.Tensor:
    """PPO-ptx: -gamma * mean log pi_RL(x) over pretraining tokens (maximising the objective term)."""
    return -ptx_coef * masked_share(logprobs, mask, tokens)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: (..., V) -> (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns


@dataclass
class FixedKLController:
    """A constant beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move beta so the observed KL tracks `target` over `horizon` samples.

    beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n_steps / horizon)
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adapt beta after a batch of n_steps samples whose mean KL was current_kl."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

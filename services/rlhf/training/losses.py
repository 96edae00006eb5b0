"""The offline stages' losses, as small pure functions: one per equation, tested on hand-computed tensors.

SFT (next-token cross-entropy on the response only), with labels IGNORE on prompt and padding:

    loss = -sum_t log pi(y_t | x, y_<t)   over response tokens, divided by their count over the whole batch

The reward model's K-wise ranking loss (Ouyang et al., 2022, eq. 1). For one prompt x with K ranked
responses, all C(K,2) comparisons (y_w preferred to y_l) count:

    loss(x) = -1/C(K,2) * sum_{(y_w, y_l)} log sigma(r(x, y_w) - r(x, y_l))

and a batch's loss is the mean of loss(x) over its prompts. Pairwise data is the case K = 2.

DPO (Rafailov et al. 2023), cDPO and IPO (Azar et al. 2023), with per comparison
h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]:

    sigmoid (DPO)   -log sigma(beta h)
      + smoothing   -(1 - e) log sigma(beta h) - e log sigma(-beta h)    (cDPO: labels flipped with prob e)
    ipo             (h - 1 / (2 beta))^2
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of positions that do not count towards the loss


def response_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the labelled (response) tokens, and how many there are.
    logits (B, T, V) and labels (B, T), labels IGNORE where a position does not count."""
    targets = labels[:, 1:]  # the token at t+1 is predicted by the logits at t
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((targets != IGNORE).sum())


def kwise_loss(
    rewards: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor, group: torch.Tensor, num_prompts: int
) -> torch.Tensor:
    """rewards (N,) for the batch's distinct items; winners, losers, group (P,) per comparison."""
    logp = F.logsigmoid(rewards[winners] - rewards[losers])  # (P,) log sigma(r_w - r_l)
    per_prompt = torch.zeros(num_prompts, dtype=logp.dtype, device=logp.device).index_add(0, group, logp)  # (G,)
    comparisons = torch.bincount(group, minlength=num_prompts).clamp(min=1)  # (G,) C(K,2) of each prompt
    return -(per_prompt / comparisons).mean()


def pairwise_accuracy(rewards: torch.Tensor, winners: torch.Tensor, losers: torch.Tensor) -> tuple[int, int]:
    """(comparisons the rewards order correctly, comparisons): ties count as wrong."""
    return int((rewards[winners] > rewards[losers]).sum()), len(winners)


def preference_logits(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor
) -> torch.Tensor:
    """h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), per comparison."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def sigmoid_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO: -log sigma(beta h); with smoothing e, cDPO's -(1 - e) log sigma(beta h) - e log sigma(-beta h)."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO: (h - 1/(2 beta))^2, pulling the log-ratio margin to a fixed target instead of to infinity."""
    return (h - 1 / (2 * beta)) ** 2

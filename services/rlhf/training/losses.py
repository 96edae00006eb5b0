"""The K-wise ranking loss of InstructGPT (Ouyang et al., 2022, eq. 1).

For one prompt x with K ranked responses, all C(K,2) comparisons (y_w preferred to y_l) count:

    loss(x) = -1/C(K,2) * sum_{(y_w, y_l)} log sigma(r(x, y_w) - r(x, y_l))

and a batch's loss is the mean of loss(x) over its prompts. Pairwise data is the case K = 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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

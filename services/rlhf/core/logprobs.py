"""Per-token log-probabilities of response tokens given prompt tokens.

One implementation shared by the policy service, the reference service and the learner, so
that log pi_RL and log pi_SFT of the same ids agree to float precision. Sequences are right-
padded, so every sequence keeps positions 0..T-1 and no position ids need adjusting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask for sequences of different lengths."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def response_positions(prompt_lens: torch.Tensor, response_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the logit that predicts each response token, and a mask of real tokens.

    Response token j of sequence b sits at position P_b + j and is predicted by the logits at
    P_b + j - 1. Returns (B, R) positions (clamped into range for padding) and the (B, R) mask.
    """
    width = int(response_lens.max()) if len(response_lens) else 0
    j = torch.arange(width, device=prompt_lens.device)  # (R,)
    positions = prompt_lens[:, None] + j[None, :] - 1  # (B, R)
    mask = j[None, :] < response_lens[:, None]  # (B, R)
    return positions.clamp(min=0) * mask, mask


def gather_logprobs(logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[b, positions[b, j]])[targets[b, j]] in float32, without a (B, T, V) log-softmax."""
    picked = logits.gather(1, positions[..., None].expand(-1, -1, logits.size(-1))).float()  # (B, R, V)
    return picked.gather(-1, targets[..., None]).squeeze(-1) - picked.logsumexp(-1)  # (B, R)


def response_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    *,
    return_hidden: bool = False,
):
    """(B, R) log pi(y_t | x, y_<t) for right-padded responses, and their (B, R) mask.

    Every prompt must hold at least one token. With return_hidden, also returns the final hidden
    states (B, T, H) and the (B, R) positions of the response tokens' predecessors, for value heads.
    """
    device = next(model.parameters()).device
    ids, attention = pad_right([list(p) + list(r) for p, r in zip(prompts, responses, strict=True)], pad_id, device)
    prompt_lens = torch.tensor([len(p) for p in prompts], device=device)
    response_lens = torch.tensor([len(r) for r in responses], device=device)
    positions, mask = response_positions(prompt_lens, response_lens)
    out = model(input_ids=ids, attention_mask=attention, output_hidden_states=return_hidden)
    targets = ids.gather(1, (positions + 1) * mask)  # (B, R): the response tokens themselves
    logprobs = gather_logprobs(out.logits, positions, targets) * mask
    if return_hidden:
        return logprobs, mask, out.hidden_states[-1], positions
    return logprobs, mask


def response_logprobs_list(model, prompts, responses, pad_id) -> list[list[float]]:
    """response_logprobs as plain lists, one per sequence, without padding."""
    logprobs, mask = response_logprobs(model, prompts, responses, pad_id)
    lengths = mask.sum(-1).tolist()
    return [row[:n] for row, n in zip(logprobs.tolist(), lengths, strict=True)]

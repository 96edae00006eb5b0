"""The learner's two models: pi_RL (a causal LM) and the critic (an LM with a scalar head per token).

Both run on the same right-padded (prompt + response) ids as the policy and reference services
(rlhf.core.logprobs), so log pi_RL here and log pi_SFT there line up token by token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from rlhf.core.errors import UserError
from rlhf.core.logprobs import gather_logprobs, pad_right, response_positions
from rlhf.core.modeling import load_causal_lm, load_score_model
from rlhf.core.training import base_model
from rlhf.learner import ppo

TokenIds = Sequence[Sequence[int]]
log = logging.getLogger("rlhf.learner")


def load_policy(path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """pi_RL, in float32 unless --precision bf16-true: PPO's small ratio differences need the precision.

    Both models stay in eval mode while they train: dropout would make the learner's log-probs
    disagree with the sampler's and the reference's, and add noise to the PPO ratio.
    """
    return load_causal_lm(path, device, dtype).eval()


def load_value_model(path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The critic: a sequence-classification LM with one label, from a reward-model or SFT dir.

    From an SFT dir the scalar head starts random; from a reward-model dir it starts as r_theta.
    """
    model = load_score_model(path, device, dtype, "value model")
    if not isinstance(getattr(model, "score", None), torch.nn.Module):
        raise UserError(f"value model {path}: {type(model).__name__} has no `score` head to apply per token")
    return model.eval()


def share_frozen_backbone(value: torch.nn.Module, policy: torch.nn.Module) -> int:
    """With LoRA both backbones stay frozen. Where the critic's backbone holds exactly the policy's weights (the
    default --value-model, the SFT dir), it takes the policy's tensors instead of keeping a copy: one base in
    memory, not two. All or nothing: any parameter that differs in name, shape, dtype or value shares none.
    `value` is the plain model, before LoRA wraps it; `policy` is already wrapped (peft keeps each adapted layer
    as `base_layer`, frozen). Training never writes the shared tensors; only the final in-place merge of the
    policy's adapter does, once training is over. Returns the bytes freed."""
    mine, theirs = value.base_model, base_model(policy).base_model  # transformers: the backbone
    theirs_params = {
        name.replace(".base_layer.", "."): param for name, param in theirs.named_parameters() if not param.requires_grad
    }
    names = [name for name, _ in mine.named_parameters()]
    if type(mine) is not type(theirs) or sorted(names) != sorted(theirs_params):
        log.info(
            "the value model keeps a base of its own: its backbone is not the policy's",
            extra={"value": type(mine).__name__, "policy": type(theirs).__name__},
        )
        return 0
    for name, param in mine.named_parameters():
        other = theirs_params[name]
        if (
            other.shape != param.shape
            or other.dtype != param.dtype
            or other.device != param.device
            or not torch.equal(other, param)
        ):
            log.info(
                "the value model keeps a base of its own: its weights differ from the policy's",
                extra={"first_difference": name},
            )
            return 0
    freed = 0
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = mine.get_submodule(module_name)
        if module._parameters[attr] is not theirs_params[name]:
            freed += module._parameters[attr].numel() * module._parameters[attr].element_size()
            module._parameters[attr] = theirs_params[name]
    return freed


def shares_parameters(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    """Whether any parameter of `model` is one of `other`'s (share_frozen_backbone)."""
    theirs = {id(p) for p in other.parameters()}
    return any(id(p) in theirs for p in model.parameters())


def _batch(prompts: TokenIds, responses: TokenIds, pad_id: int, device: torch.device):
    ids, attention = pad_right([list(p) + list(r) for p, r in zip(prompts, responses, strict=True)], pad_id, device)
    prompt_lens = torch.tensor([len(p) for p in prompts], device=device)
    response_lens = torch.tensor([len(r) for r in responses], device=device)
    positions, mask = response_positions(prompt_lens, response_lens)  # (B, R) each
    return ids, attention, positions, mask


def policy_forward(
    model: torch.nn.Module, prompts: TokenIds, responses: TokenIds, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, R) log pi(y_t | x, y_<t), (B, R) entropy of pi at each response position (no grad), (B, R) mask."""
    device = next(model.parameters()).device
    ids, attention, positions, mask = _batch(prompts, responses, pad_id, device)
    logits = model(input_ids=ids, attention_mask=attention).logits  # (B, T, V)
    targets = ids.gather(1, (positions + 1) * mask)  # (B, R): the response tokens
    logprobs = gather_logprobs(logits, positions, targets)
    with torch.no_grad():  # entropy is watched, not optimised: no graph for a (B, R, V) tensor
        response_logits = logits.gather(1, positions[..., None].expand(-1, -1, logits.size(-1)))  # (B, R, V)
        entropy = ppo.entropy_from_logits(response_logits.float())
    fmask = mask.float()
    return logprobs * fmask, entropy * fmask, fmask


def value_forward(model: torch.nn.Module, prompts: TokenIds, responses: TokenIds, pad_id: int) -> torch.Tensor:
    """(B, R) V(x, y_<t): the scalar head applied to the hidden state that predicts response token t.

    The whole model runs (FSDP2 gathers a sharded model's weights in its forward): its classification head sees
    every position's hidden state, and a hook keeps them all, before the forward pools one position. With LoRA
    the head is in the transformers model under the PeftModel."""
    device = next(model.parameters()).device
    ids, attention, positions, mask = _batch(prompts, responses, pad_id, device)
    seen: list[torch.Tensor] = []
    hook = base_model(model).score.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        model(input_ids=ids, attention_mask=attention)
    finally:
        hook.remove()
    per_position = seen[-1].squeeze(-1)  # (B, T)
    return per_position.gather(1, positions).float() * mask.float()


def sequence_logprobs(model: torch.nn.Module, texts: TokenIds, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(x_t | x_<t) for t >= 1 of whole sequences (PPO-ptx): the first token is the 'prompt'."""
    logprobs, _, mask = policy_forward(model, [t[:1] for t in texts], [t[1:] for t in texts], pad_id)
    return logprobs, mask

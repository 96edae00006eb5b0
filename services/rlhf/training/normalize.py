"""Normalization: fold a constant into the model so the reference completions score a mean of 0.

Where the constant can live, in order of preference:

1. The head's own bias, when it has one.
2. The bias of the LayerNorm whose output is the head's input (GPT-2's `ln_f`, GPT-NeoX's
   `final_layer_norm`, OPT, Falcon, Phi...). In a sequence-classification model that output feeds
   only the head, so shifting the bias by -c * w / |w|^2 moves every score by exactly -c:
   w . (g * n + b - c * w / |w|^2) = w . (g * n + b) - c.
   Decoder heads in transformers 5.x (`GenericForSequenceClassification`, GPT-2, OPT, ...) are
   `nn.Linear(hidden, num_labels, bias=False)`, so for the tiny GPT-2 this is the path taken.
3. Otherwise (RMSNorm models such as Llama, Qwen or Mistral have no additive parameter after the
   last norm) the constant is stored in config.json as `reward_offset`. The service and
   `LocalReward` add it; a plain `from_pretrained` loads fine but its raw scores differ by that
   constant (pairwise comparisons are unaffected).
"""

from __future__ import annotations

import torch

from rlhf.core.distributed import add_to_parameter, full_tensor, reshard
from rlhf.core.reward_model import OFFSET_KEY


def trained_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself; for a LoRA model's fully trained module (peft's ModulesToSaveWrapper), the active copy."""
    copies = getattr(module, "modules_to_save", None)
    return copies[module.active_adapters[0]] if isinstance(copies, torch.nn.ModuleDict) else module


def score_head(model: torch.nn.Module) -> torch.nn.Linear:
    head = trained_copy(getattr(model, "score", None) or getattr(model, "classifier", None))
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(f"{type(model).__name__}: expected a one-output linear `score` head")
    return head


def final_layer_norm(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The LayerNorm (with a bias) whose output is exactly the head's input, found by running the model."""
    head = score_head(model)
    norms = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm) and m.bias is not None}
    outputs: dict[str, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=name: outputs.__setitem__(n, out)) for name, m in norms.items()
    ]
    hooks.append(head.register_forward_pre_hook(lambda _m, args: seen.__setitem__("head", args[0])))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for hook in hooks:
            hook.remove()
    head_input = seen["head"]
    for name, out in reversed(outputs.items()):
        if out.shape == head_input.shape and torch.equal(out, head_input):
            return name, norms[name]
    return None, None


def offset_modules(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[str, ...]:
    """What must be trained and saved besides LoRA's adapters for the offset to land in an adapter: the final
    LayerNorm when the head has no bias, by its full name (peft matches modules_to_save as a name suffix, and
    OPT's last part, final_layer_norm, is also every layer's own)."""
    if score_head(model).bias is not None:
        return ()
    name, _ = final_layer_norm(model, input_ids, attention_mask)
    return (name,) if name else ()


@torch.no_grad()
def fold_offset(model: torch.nn.Module, offset: float, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    """Make every score smaller by `offset`; returns where the offset went. ids: a probe batch. Under FSDP2 every
    rank calls it (the probe's forward is a collective) and each edits its shards."""
    head = score_head(model)
    name, norm = final_layer_norm(model, input_ids, attention_mask) if head.bias is None else (None, None)
    reshard(model)  # the forward left the root's parameters gathered: edits must go to the shards
    if head.bias is not None:
        head.bias -= offset
        return "score head bias"
    if norm is not None:
        w = full_tensor(head.weight)[0].to(torch.float64)  # (H,)
        add_to_parameter(norm.bias, (-offset * w / w.dot(w)).to(norm.bias.dtype))
        return f"{name}.bias"
    setattr(model.config, OFFSET_KEY, getattr(model.config, OFFSET_KEY, 0.0) - offset)
    return f"config.json {OFFSET_KEY}"

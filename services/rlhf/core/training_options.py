"""The memory flags every `rlhf train` stage takes (precision, gradient checkpointing, LoRA), defined once.

Kept apart from rlhf.core.training, which does the work, so that building the CLI imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.core.errors import UserError
from rlhf.core.flags import setting

Precision = Literal["fp32", "bf16-mixed", "bf16-true"]
GROUP = "memory: precision, checkpointing, LoRA"


@dataclass(kw_only=True)
class TrainingOptions:
    """The flags every `rlhf train` stage takes for memory: mixed into each stage's config."""

    precision: Precision = setting("fp32", group=GROUP)
    """fp32; bf16-mixed: bfloat16 autocast over float32 weights and optimizer states; bf16-true: bfloat16 weights,
    float32 optimizer states"""
    gradient_checkpointing: bool = setting(False, group=GROUP)
    """recompute each block's activations in the backward pass: far less activation memory, about a third
    more compute"""
    lora_r: int = setting(0, group=GROUP)
    """LoRA rank (peft); 0 trains every weight"""
    lora_alpha: float = setting(16.0, group=GROUP)
    """LoRA scale numerator: the update is (alpha / r) * B @ A"""
    lora_dropout: float = setting(0.0, group=GROUP)
    """dropout on the LoRA branch's input"""
    lora_target_modules: str | None = setting(None, group=GROUP)
    """comma-separated names of the modules LoRA adapts (default: every linear projection in attention and MLP,
    found by type, not name)"""
    merge: bool = setting(True, group=GROUP)
    """with LoRA, also write the merged standard model dir OUT/merged beside the adapter in OUT"""
    dist_timeout: float = 600.0
    """under torchrun: seconds a collective waits for another rank before every rank gives up"""

    @property
    def uses_lora(self) -> bool:
        return self.lora_r > 0

    def check_training_options(self) -> None:
        if self.lora_r < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise UserError("need --lora-r >= 0, --lora-alpha > 0 and 0 <= --lora-dropout < 1")
        if self.dist_timeout <= 0:
            raise UserError("--dist-timeout must be positive")

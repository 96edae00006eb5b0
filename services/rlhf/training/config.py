"""`rlhf train sft`, `rlhf train rm` and `rlhf train dpo` settings; their flags and --help are generated from the
field docstrings (rlhf.core.flags). Kept apart from the stages' modules so that building the CLI imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from rlhf.core.training_options import TrainingOptions


@dataclass
class SFTConfig(TrainingOptions):
    """`rlhf train sft`."""

    model: str
    """pretrained causal LM dir (any Hugging Face model dir, or a cached Hub name)"""
    data: str
    """JSONL, one {"prompt", "response"} per line ("completion" works); a {"text"} line is plain text, trained on
    every token (continued pretraining); or conversations: {"messages": [...]}, {"prompt": [...], "completion":
    [...]}"""
    out: str
    """model dir to write (with its tokenizer)"""
    epochs: int = 1
    """passes over the training split (more overfits)"""
    lr: float = 5e-5
    """AdamW learning rate, decayed linearly to 0"""
    batch_size: int = 16
    """pairs per optimizer step"""
    max_length: int = 512
    """longest prompt + response in tokens (capped at the model context); longer pairs lose the start of the
    prompt"""
    eval_fraction: float = 0.05
    """share of pairs held out for the eval loss"""
    seed: int = 0
    """seed of the held-out split, shuffling and dropout"""
    device: str = "auto"
    """auto, cpu, cuda, mps"""
    max_grad_norm: float = 1.0
    """clip the gradient's norm to this"""
    loss_on: Literal["assistant", "completion", "all"] | None = None
    """where the loss falls (default: a response, a conversation's assistant turns, a completion)"""
    chat_template: str = ""
    """Jinja chat template file for conversational data, in place of the tokenizer's own"""


@dataclass
class RewardTrainConfig(TrainingOptions):
    """`rlhf train rm`."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "data", "out")
    model: str = ""
    """starting point: a causal LM dir (e.g. the SFT model) or a cached Hub name"""
    data: str = ""
    """preference data: JSONL or Parquet file, or a cached `datasets` name[:split]"""
    out: str = ""
    """where to write the reward model dir (model + tokenizer)"""
    epochs: int = 3
    """passes over the training rankings"""
    lr: float = 3e-4
    """AdamW peak learning rate (warmup over 5%% of steps, then linear decay)"""
    batch_size: int = 16
    """prompts per batch; each brings all C(K,2) of its comparisons"""
    max_length: int | None = None
    """tokens per (prompt, response); longer inputs lose the prompt start (default: the model context)"""
    eval_fraction: float = 0.1
    """share of prompts held out to measure pairwise accuracy"""
    seed: int = 0
    """data split, shuffling and head initialisation"""
    device: str = "auto"
    """auto, cpu, cuda, mps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    adam_beta2: float = 0.999
    """AdamW beta2; 0.95 (as in GPT-3) helps small models learn the task"""
    chat_template: str = ""
    """Jinja chat template file for conversational data, in place of the tokenizer's own"""


@dataclass
class DPOConfig(TrainingOptions):
    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "data", "out")
    model: str = ""
    """the SFT model dir: pi starts here, and (without --reference) a frozen copy is pi_ref"""
    data: str = ""
    """preference data, as for `rlhf train rm`: JSONL or Parquet, chosen/rejected or K-wise rankings"""
    out: str = ""
    """where to write the tuned model dir (model + tokenizer)"""
    reference: str = ""
    """reference-policy service HOST:PORT for log pi_ref (default: a frozen local copy of --model)"""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """sigmoid: DPO (cDPO with --label-smoothing); ipo: IPO's squared loss"""
    beta: float = 0.1
    """beta: how far pi may move from pi_ref (smaller: further)"""
    label_smoothing: float = 0.0
    """cDPO: the chance that a label is flipped, in [0, 0.5) (sigmoid loss only)"""
    epochs: int = 1
    """passes over the training rankings"""
    lr: float = 1e-6
    """AdamW learning rate, decayed linearly to 0"""
    batch_size: int = 8
    """prompts per batch; each brings all C(K,2) of its comparisons"""
    max_length: int = 512
    """longest prompt + response in tokens; longer pairs lose the start of the prompt"""
    eval_fraction: float = 0.1
    """share of prompts held out to measure preference accuracy"""
    seed: int = 0
    """data split and shuffling"""
    device: str = "auto"
    """auto, cpu, cuda, mps"""
    max_grad_norm: float = 1.0
    """gradient clipping"""
    chat_template: str = ""
    """Jinja chat template file for conversational data, in place of the tokenizer's own"""

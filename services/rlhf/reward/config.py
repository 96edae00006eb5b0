"""Every reward setting, in two dataclasses; the CLI flags and their --help are generated from their field
docstrings (rlhf.core.flags)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf.core.training_options import TrainingOptions

DEFAULT_PORT = 50051  # rlhf serve reward


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


@dataclass
class RewardServiceConfig:
    """`rlhf serve reward` (the server flags themselves come from rlhf.core.server.ServerOptions)."""

    model: str = ""
    """reward model dir (from `rlhf train rm`); or give --function"""
    function: str = ""
    """serve a Python function instead of a model: PKG.MODULE:FN (or path/to/file.py:FN), called as
    fn(prompts: list[str], responses: list[str]) -> list[float] on each batch (rule-based, verifiable rewards)"""
    device: str = "auto"
    """auto, cpu, cuda, mps"""
    dtype: str = "auto"
    """auto (bfloat16 on GPUs that support it, else float32), float32, bfloat16, float16"""
    max_batch_size: int = 64
    """most items per model batch (1 turns dynamic batching off)"""
    max_wait_ms: float = 2.0
    """longest an item waits for its batch to fill"""
    max_items_per_request: int = 1024
    """larger requests are refused with INVALID_ARGUMENT"""
    max_queue: int = 16384
    """admission control: most items waiting for a batch; a request that would pass it is answered
    RESOURCE_EXHAUSTED at once (clients back off and retry), so an overloaded server's memory stays flat"""
    instances: int = 1
    """model copies, each in its own process, running batches concurrently (on CPU each gets cpus/instances
    torch threads)"""

"""Every `rlhf serve reward` setting (`rlhf train rm`'s are in rlhf.training.config); the CLI flags and their
--help are generated from the field docstrings (rlhf.core.flags)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 50051  # rlhf serve reward


@dataclass
class RewardServiceConfig:
    """`rlhf serve reward` (the server flags themselves come from rlhf.core.server.ServerOptions)."""

    model: str = ""
    """reward model dir (from `rlhf train rm`); or give --function"""
    function: str = ""
    """serve a Python function instead of a model: PKG.MODULE:FN (or path/to/file.py:FN), called as
    fn(prompts: list[str], responses: list[str]) -> list[float] on each batch (rule-based, verifiable rewards);
    a function with a `messages` parameter also gets each item's prompt conversation (None for a text prompt)"""
    chat_template: str = ""
    """Jinja chat template file for conversational prompts, in place of the reward model tokenizer's own"""
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

"""`rlhf serve reference` settings; its flags and --help are generated from the field docstrings
(rlhf.core.flags). Kept apart from rlhf.reference.service so that building the CLI imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 50053  # rlhf serve reference


@dataclass
class ReferenceServiceConfig:
    """`rlhf serve reference` (the server flags themselves come from rlhf.core.server.ServerOptions)."""

    model: str
    """causal LM dir to serve (the SFT model)"""
    device: str = "auto"
    """auto, cpu, cuda, mps"""
    dtype: str = "float32"
    """auto, float32, bfloat16 or float16 (float32: the KL term needs log-probs that agree with the learner's)"""
    max_batch_size: int = 32
    """most pairs in one forward pass"""
    max_wait_ms: float = 5.0
    """longest a request waits for a batch to fill"""
    max_items_per_request: int = 1024
    """most pairs in one request"""
    max_queue: int = 16384
    """admission control: most pairs waiting for a batch; a request that would pass it is answered
    RESOURCE_EXHAUSTED at once (clients back off and retry)"""

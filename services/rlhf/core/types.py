"""Plain data types that cross package boundaries (policy <-> learner <-> reference)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one Generate call. temperature == 0 means greedy decoding."""

    max_new_tokens: int = 64
    """longest response"""
    temperature: float = 1.0
    """0 is greedy"""
    top_p: float = 1.0
    """nucleus sampling: sample from the likeliest tokens whose probabilities add up to this"""
    top_k: int = 0
    """sample from the k likeliest tokens; 0: off"""
    seed: int | None = None
    """same seed and weights give the same samples"""
    n: int = 1
    """samples per prompt"""
    ignore_eos: bool = False
    """keep sampling after EOS"""
    min_new_tokens: int = 0
    """no EOS before this many tokens: EOS is held back until the response has them"""


@dataclass
class Sample:
    """One sampled response. Token ids, not text, are the source of truth between services."""

    prompt_token_ids: list[int]
    response_token_ids: list[int]
    logprobs: list[float]  # log pi(y_t | x, y_<t) under the unmodified model distribution
    finish_reason: str  # "eos" or "length"
    weights_version: int
    response_text: str = ""
    prompt_index: int = 0
    extra: dict = field(default_factory=dict)

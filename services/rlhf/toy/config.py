"""`rlhf tiny-model` settings; its flags and --help are generated from the field docstrings (rlhf.core.flags).
Kept apart from rlhf.toy.tiny so that building the CLI imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhf.core.flags import setting


@dataclass
class TinyModelConfig:
    """The tiny GPT-2 and its tokenizer (`rlhf tiny-model`)."""

    vocab_size: int = 1024
    """BPE vocabulary size: merges learned up to this size (special tokens included)"""
    n_layer: int = setting(2, flag="--layers")
    """transformer blocks"""
    n_embd: int = setting(128, flag="--hidden")
    """embedding width"""
    n_head: int = setting(4, flag="--heads")
    """attention heads"""
    n_positions: int = setting(256, flag="--context")
    """context length in tokens"""
    seed: int = 0
    """initialisation and tokenizer seed"""
    layout: Literal["gpt2", "llama"] = "gpt2"
    """architecture (llama: <|im_end|> ends a turn)"""

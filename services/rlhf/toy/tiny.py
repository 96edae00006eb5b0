"""The embedded default model: a small, randomly initialised GPT-2 with a byte-level BPE tokenizer.

Everything in this project runs on it offline on a CPU. The tokenizer is trained here, from text
bundled in the package; being byte-level, it encodes any UTF-8 text with no unknown token.

    rlhf tiny-model --out models/tiny
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from rlhf.core.modeling import save_model_dir
from rlhf.toy.synthetic import tokenizer_corpus

EOS, PAD = "<|endoftext|>", "<|pad|>"


@dataclass
class TinyModelConfig:
    vocab_size: int = 1024  # BPE merges learned up to this size (special tokens included)
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256  # context length
    seed: int = 0


def bundled_text() -> list[str]:
    return resources.files("rlhf.toy").joinpath("data/corpus.txt").read_text(encoding="utf-8").splitlines()


def train_tokenizer(vocab_size: int, seed: int = 0, n_positions: int = 256):
    """Byte-level BPE trained on the bundled text, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(bundled_text() + tokenizer_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD, model_max_length=n_positions
    )


def make_tiny_model(out: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Write tokenizer + randomly initialised GPT-2 as a standard Hugging Face model dir."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = config or TinyModelConfig()
    tokenizer = train_tokenizer(config.vocab_size, config.seed, config.n_positions)
    torch.manual_seed(config.seed)
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return save_model_dir(GPT2LMHeadModel(model_config), tokenizer, out)

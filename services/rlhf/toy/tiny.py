"""The embedded default model: a small, randomly initialised GPT-2 with a byte-level BPE tokenizer.

Everything in this project runs on it offline on a CPU. The tokenizer is trained here, from text
bundled in the package; being byte-level, it encodes any UTF-8 text with no unknown token. It carries a
ChatML-style chat template, so conversations work on it too: the GPT-2 layout closes each turn with EOS (its
vocabulary, and so its weights, stay as they were); the Llama layout adds `<|im_start|>` and `<|im_end|>` as
special tokens, `<|im_end|>` ending a turn, as chat models' templates do.

    rlhf tiny-model --out models/tiny
    rlhf tiny-model --out models/tiny-llama --layout llama
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from rlhf.core.modeling import save_model_dir
from rlhf.toy.config import TinyModelConfig
from rlhf.toy.synthetic import tokenizer_corpus

EOS, PAD = "<|endoftext|>", "<|pad|>"
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"


def chatml_template(turn_end: str) -> str:
    """ChatML: `<|im_start|>role\ncontent` and `turn_end` per message, then the assistant header on request."""
    return (
        "{% for m in messages %}" + TURN_START + "{{ m['role'] }}\n{{ m['content'] }}" + turn_end + "\n{% endfor %}"
        "{% if add_generation_prompt %}" + TURN_START + "assistant\n{% endif %}"
    )


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
    """Write tokenizer (with its chat template) + randomly initialised model as a standard Hugging Face model dir."""
    config = config or TinyModelConfig()
    tokenizer = train_tokenizer(config.vocab_size, config.seed, config.n_positions)
    if config.layout == "llama":
        tokenizer.add_special_tokens({"additional_special_tokens": [TURN_START, TURN_END]})
        tokenizer.chat_template = chatml_template(TURN_END)
    else:
        tokenizer.chat_template = chatml_template("{{ eos_token }}")
    torch.manual_seed(config.seed)
    model = tiny_llama(config, tokenizer) if config.layout == "llama" else tiny_gpt2(config, tokenizer)
    return save_model_dir(model, tokenizer, out)


def tiny_gpt2(config: TinyModelConfig, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=config.n_positions,
            n_embd=config.n_embd,
            n_layer=config.n_layer,
            n_head=config.n_head,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def tiny_llama(config: TinyModelConfig, tokenizer):
    """The Llama layout (RMSNorm, rotary positions, SwiGLU); generation stops at EOS or `<|im_end|>`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.n_embd,
            intermediate_size=4 * config.n_embd,
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            num_key_value_heads=config.n_head,
            max_position_embeddings=config.n_positions,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(TURN_END)]
    return model

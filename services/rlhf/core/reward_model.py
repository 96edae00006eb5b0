"""The reward model r_theta(x, y): an LM with a one-output head, read at the last non-pad token.

Training, the service and `LocalReward` all go through `reward_forward` on ids made by
`rlhf.core.text.encode_pair`, so a pair scores the same everywhere (and the same as a plain
`AutoModelForSequenceClassification.from_pretrained` on the saved dir).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from rlhf.core.batching import by_length_chunks
from rlhf.core.logprobs import pad_right
from rlhf.core.modeling import (
    context_length,
    describe_model,
    load_score_model,
    load_tokenizer,
    model_dir_version,
    resolve_device,
    resolve_dtype,
)
from rlhf.core.text import Encoded, encode_pairs
from rlhf.core.training import TrainingOptions, autocast
from rlhf.v1 import common_pb2

# Set only for architectures with no bias the mean can be folded into (see normalize.py).
OFFSET_KEY = "reward_offset"


def load_sequence_classifier(path: str | os.PathLike, tokenizer, device: torch.device, dtype: torch.dtype):
    """AutoModelForSequenceClassification with one label; its pad id set so the head reads the last real token."""
    model = load_score_model(path, device, dtype, "reward model")
    # Without a pad id the head reads the last position, which is padding in all but the longest row.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def reward_forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) float32 rewards for right-padded (B, T) ids."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, 1)
    return logits[:, 0].float() + getattr(model.config, OFFSET_KEY, 0.0)


class RewardScorer:
    """A reward model with its tokenizer: (prompt, response) text in, float rewards out."""

    def __init__(self, model: torch.nn.Module, tokenizer, path: str = "", options: TrainingOptions | None = None):
        self.model, self.tokenizer, self.path = model.eval(), tokenizer, path
        self.device = next(model.parameters()).device
        self.options = options or TrainingOptions()  # its precision, while it scores during training
        self.max_length = context_length(model.config)
        self._version = model_dir_version(path) if path else ""

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto", dtype: str = "float32") -> RewardScorer:
        torch_device = resolve_device(device)
        tokenizer = load_tokenizer(path)
        model = load_sequence_classifier(path, tokenizer, torch_device, resolve_dtype(dtype, torch_device))
        return cls(model, tokenizer, str(path))

    def encode(self, items: Sequence[tuple[str, str]]) -> list[Encoded]:
        """Token ids per the one truncation policy: keep the whole response and the end of the prompt."""
        return encode_pairs(self.tokenizer, items, self.max_length)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Rewards for one model batch (no grad)."""
        ids, attention = pad_right([e.input_ids for e in batch], self.tokenizer.pad_token_id, self.device)
        with torch.inference_mode(), autocast(self.options, self.device):
            return reward_forward(self.model, ids, attention).tolist()

    def score_encoded(self, encoded: Sequence[Encoded], batch_size: int = 64) -> list[float]:
        scores = [0.0] * len(encoded)
        for chunk in by_length_chunks([len(e.input_ids) for e in encoded], batch_size):
            for i, value in zip(chunk, self.forward([encoded[i] for i in chunk]), strict=True):
                scores[i] = value
        return scores

    def score(self, items: Sequence[tuple[str, str]], batch_size: int = 64) -> list[float]:
        return self.score_encoded(self.encode(items), batch_size)

    def score_batch(self, items: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """One model batch from text: (reward, whether the input was truncated) per item."""
        encoded = self.encode(items)
        return list(zip(self.forward(encoded), (e.truncated for e in encoded), strict=True))

    @property
    def model_version(self) -> str:
        return self._version

    def model_info(self, max_batch_size: int = 0, max_items_per_request: int = 0) -> common_pb2.ModelInfo:
        return describe_model(
            self.model,
            self.tokenizer,
            self.path,
            weights_version=0,
            max_batch_size=max_batch_size,
            max_items_per_request=max_items_per_request,
        )

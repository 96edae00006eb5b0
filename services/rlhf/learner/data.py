"""D_RL prompts and PPO-ptx pretraining text, read in a seeded order that a cursor can resume."""

from __future__ import annotations

import logging

import torch

from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl_field
from rlhf.core.text import encode_prompt

log = logging.getLogger("rlhf.learner")


class CursorSampler:
    """Items in a fresh seeded permutation per pass; `cursor` (items taken so far) is the whole state."""

    def __init__(self, items: list, seed: int, cursor: int = 0):
        self.items, self.seed, self.cursor = items, seed, cursor

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.items), generator=generator).tolist()

    def take(self, n: int) -> list:
        """The next n items, wrapping into a new permutation at the end of a pass."""
        batch = []
        while len(batch) < n:
            epoch, offset = divmod(self.cursor, len(self.items))
            order = self._order(epoch)
            take = min(n - len(batch), len(order) - offset)
            batch += [self.items[i] for i in order[offset : offset + take]]
            self.cursor += take
        return batch


def load_prompts(path: str, tokenizer, max_prompt_tokens: int) -> list[str]:
    """Prompts from JSONL, skipping (and counting) those too long to leave room for a response."""
    prompts = read_jsonl_field(path, "prompt")
    kept = [p for p in prompts if len(encode_prompt(tokenizer, p)) <= max_prompt_tokens]
    if len(kept) < len(prompts):
        log.warning(
            "skipped prompts longer than --max-length minus --max-new-tokens",
            extra={"skipped": len(prompts) - len(kept), "max_prompt_tokens": max_prompt_tokens},
        )
    if not kept:
        raise UserError(f"every prompt in {path} is longer than {max_prompt_tokens} tokens")
    return kept


def load_ptx_sequences(path: str, tokenizer, max_length: int) -> list[list[int]]:
    """Pretraining text as token ids, each cut to max_length tokens; one-token texts carry no loss."""
    sequences = [tokenizer(text)["input_ids"][:max_length] for text in read_jsonl_field(path, "text")]
    sequences = [s for s in sequences if len(s) >= 2]
    if not sequences:
        raise UserError(f"{path}: no text of two or more tokens")
    return sequences

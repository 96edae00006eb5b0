"""D_RL prompts and PPO-ptx pretraining text, read in a seeded order that a cursor can resume."""

from __future__ import annotations

import logging

import torch

from rlhf.core.chat import Conversation, is_conversation, parse_conversation, render
from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl, read_jsonl_field
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


class ChatPrompt(str):
    """A conversational prompt: the text the policy's chat template writes for it (with the generation prompt),
    which is what the policy is sent, and the messages, which are what each reward service renders itself."""

    messages: Conversation

    def __new__(cls, text: str, messages: Conversation) -> ChatPrompt:
        prompt = super().__new__(cls, text)
        prompt.messages = messages
        return prompt

    def __reduce__(self):
        return ChatPrompt, (str(self), self.messages)


def prompt_rows(path: str) -> list[tuple[str, str | Conversation]]:
    """(where, prompt) per row: text, or a checked conversation; one kind per file. Needs no tokenizer, so a bad
    file fails before any model loads."""
    rows: list[tuple[str, str | Conversation]] = []
    for where, row in read_jsonl(path):
        value = row.get("prompt")
        if is_conversation(value):
            rows.append((where, parse_conversation(value, where, "prompt")))
        elif isinstance(value, str):
            rows.append((where, value))
        else:
            raise UserError(f'{where}: expected a string "prompt" field (or a list of messages)')
        if isinstance(rows[-1][1], str) != isinstance(rows[0][1], str):
            raise UserError(f"{where}: text and conversational (messages) prompts are mixed in one file")
    if not rows:
        raise UserError(f"{path} holds no prompts")
    return rows


def read_prompts(path: str, tokenizer) -> list[str]:
    """Each row's prompt: text, or a conversation rendered with the tokenizer's template and a generation prompt."""
    return [
        p if isinstance(p, str) else ChatPrompt(render(tokenizer, p, generation_prompt=True, where=where), p)
        for where, p in prompt_rows(path)
    ]


def reward_prompt(prompt: str):
    """What a reward service is sent for a prompt: its messages when it is a conversation, else its text."""
    return prompt.messages if isinstance(prompt, ChatPrompt) else prompt


def load_prompts(path: str, tokenizer, max_prompt_tokens: int) -> list[str]:
    """Prompts from JSONL, skipping (and counting) those too long to leave room for a response."""
    prompts = read_prompts(path, tokenizer)
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

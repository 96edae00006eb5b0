"""How a (prompt, response) pair becomes token ids, the same way in every stage.

Prompt and response are tokenized separately and their ids concatenated (never re-tokenized
as one string), and EOS closes the response. Truncation policy, everywhere: keep the last
`max_length` tokens, i.e. the whole response and the end of the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Encoded:
    prompt_ids: list[int]
    response_ids: list[int]
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_response(tokenizer, response: str, add_eos: bool = True) -> list[int]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else ids


def truncate_left(prompt_ids: list[int], response_ids: list[int], max_length: int) -> Encoded:
    """Keep the last max_length tokens: the prompt loses its start first, then the response."""
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow <= 0:
        return Encoded(prompt_ids, response_ids)
    if overflow < len(prompt_ids):
        return Encoded(prompt_ids[overflow:], response_ids, truncated=True)
    return Encoded([], response_ids[overflow - len(prompt_ids) :], truncated=True)


def encode_pair(tokenizer, prompt: str, response: str, max_length: int, add_eos: bool = True) -> Encoded:
    return truncate_left(encode_prompt(tokenizer, prompt), encode_response(tokenizer, response, add_eos), max_length)


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, add_eos: bool = True) -> list[Encoded]:
    """encode_pair for many pairs: the same ids, from two batched tokenizer calls instead of two per pair
    (the per-call Python overhead of a transformers tokenizer is far larger than the tokenizing itself)."""
    if not pairs:
        return []
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
    responses = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    return [truncate_left(p, r + eos, max_length) for p, r in zip(prompts, responses, strict=True)]

"""The sampling loop: a batch of prompts decoded token by token over the model's KV cache.

Written over plain `model(...)` calls rather than `generate()` for three reasons:
- each row draws its randomness from its own generator, seeded from (request seed, row), so a
  sample does not depend on which other requests share its batch;
- the log-probability kept for each token is log_softmax of the raw logits in float32, i.e. under
  the unmodified model distribution, not the tempered or truncated one that was sampled from;
- prompts are left-padded with explicit position ids, so every row's positions start at 0 and the
  logits match an unpadded forward of the same ids.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """What rows of one batch share (the batcher groups rows by this)."""

    max_new_tokens: int
    temperature: float  # 0: greedy
    top_p: float  # in (0, 1]
    top_k: int  # 0: off
    stop_at_eos: bool
    min_new_tokens: int = 0  # EOS is not sampled before this many tokens


@dataclass
class Decoded:
    """One row's output: the sampled ids, their log-probs, and why decoding stopped."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "eos" or "length"


def row_seed(seed: int, row: int) -> int:
    """Row `row`'s own 63-bit seed, from the request's seed: the n samples of a prompt differ."""
    digest = hashlib.blake2b(f"{seed}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def row_generator(seed: int | None, row: int) -> torch.Generator:
    """The generator for row `row` of a request: from (seed, row) when seeded, fresh entropy otherwise."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(row_seed(seed, row))
    return generator


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(B, T) ids, attention mask and position ids, left-padded so every row ends at T-1."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..len-1 in every row
    return ids.to(device), mask.to(device), positions.to(device)


def choose_tokens(logits: torch.Tensor, settings: SamplingSettings, uniforms: torch.Tensor) -> torch.Tensor:
    """(B,) next tokens from (B, V) float32 logits: greedy, or inverse-CDF sampling with one uniform per row.

    Sorting is stable and the draw is a single uniform per row, so a row's choice depends only on
    its own logits and its own generator.
    """
    if settings.temperature == 0:
        return logits.argmax(-1)
    probs = (logits / settings.temperature).softmax(-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # (B, V)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if settings.top_k > 0:
        keep[:, settings.top_k :] = False
    if settings.top_p < 1:
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep &= (sorted_probs.cumsum(-1) - sorted_probs) < settings.top_p
    cdf = (sorted_probs * keep).cumsum(-1)  # (B, V)
    targets = uniforms[:, None] * cdf[:, -1:]  # (B, 1)
    picked = torch.searchsorted(cdf, targets, right=True).clamp(max=cdf.size(-1) - 1)  # (B, 1)
    return order.gather(-1, picked).squeeze(-1)


class _Forward:
    """model(...) with the cache passed under whichever name this transformers version uses."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        self.last_logits_only = "logits_to_keep" in params

    def __call__(self, ids, mask, positions, cache) -> tuple[torch.Tensor, object]:
        kwargs = {self.cache_name: cache} if cache is not None else {}
        if self.last_logits_only:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        cache = out["cache"] if "cache" in out else out.get("past_key_values")
        return out.logits[:, -1].float(), cache  # (B, V)


@torch.inference_mode()
def decode(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator],
    settings: SamplingSettings,
    eos_id: int | Sequence[int] | None,
    pad_id: int,
) -> list[Decoded]:
    """Sample up to settings.max_new_tokens tokens after each prompt (every prompt holds >= 1 token). eos_id may
    be several ids (EOS and a chat template's end of turn): a row ends at the first of them, which it keeps."""
    device = next(model.parameters()).device
    stops = [eos_id] if isinstance(eos_id, int) else list(eos_id or [])
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    forward = _Forward(model)
    ids, mask, positions = pad_left(prompts, pad_id, device)
    batch = len(prompts)
    tokens = torch.empty((batch, settings.max_new_tokens), dtype=torch.long, device=device)  # (B, N)
    logprobs = torch.empty((batch, settings.max_new_tokens), dtype=torch.float32, device=device)  # (B, N)
    lengths = torch.full((batch,), settings.max_new_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    # A row's t-th draw is its uniform for step t, whatever else is in the batch.
    uniforms = torch.stack([torch.rand(settings.max_new_tokens, generator=g) for g in generators]).to(device)
    logits, cache = forward(ids, mask, positions, None)
    steps = 0
    for step in range(settings.max_new_tokens):
        steps = step + 1
        allowed = logits
        if step < settings.min_new_tokens and stops:
            allowed = logits.clone()
            allowed[:, stop_ids] = float("-inf")  # too short to end; the log-prob below stays the raw one
        next_tokens = choose_tokens(allowed, settings, uniforms[:, step])
        tokens[:, step] = next_tokens
        # log pi(y_t | ...) under the raw distribution, whatever temperature or truncation sampled it
        logprobs[:, step] = logits.log_softmax(-1).gather(-1, next_tokens[:, None]).squeeze(-1)
        if settings.stop_at_eos and stops:
            ends_here = torch.isin(next_tokens, stop_ids) & ~finished
            lengths = torch.where(ends_here, step + 1, lengths)
            finished |= ends_here
            if bool(finished.all()):
                break
        if step + 1 == settings.max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
        positions = positions[:, -1:] + 1
        logits, cache = forward(next_tokens[:, None], mask, positions, cache)
    rows = zip(
        tokens[:, :steps].tolist(), logprobs[:, :steps].tolist(), lengths.tolist(), finished.tolist(), strict=True
    )
    return [Decoded(t[:n], lp[:n], "eos" if done else "length") for t, lp, n, done in rows]

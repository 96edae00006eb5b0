"""pi_RL behind the service and `LocalPolicy`: prompts in, samples out, weights swapped in whole.

A request becomes rows (one per prompt and sample), each carrying its prompt ids and its own
generator seed; rows of equal sampling settings can share a model batch whoever sent them.
Everything here that touches the model runs on one thread (the batcher's), so a batch never
sees two weight versions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from rlhf.core.chat import stop_token_ids
from rlhf.core.checks import InvalidRequest, check_fits_context, check_item_count, check_token_ids
from rlhf.core.modeling import (
    context_length,
    describe_model,
    load_causal_lm_and_tokenizer,
)
from rlhf.core.tensors import dtype_name
from rlhf.core.text import encode_prompt
from rlhf.core.types import GenerationParams, Sample
from rlhf.core.weights import LORA, TensorSpec, specs_of, weights_kind
from rlhf.policy.adapter import ServedAdapter
from rlhf.policy.sampling import SamplingSettings, decode, row_generator
from rlhf.v1 import common_pb2

PromptInput = str | Sequence[int]


@dataclass
class Row:
    """One sample to draw: a prompt's ids and where its randomness comes from."""

    prompt_ids: list[int]
    settings: SamplingSettings
    seed: int | None
    index: int  # row number within its request: prompt_index * n + sample
    prompt_index: int


@dataclass
class RowResult:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str
    weights_version: int


def check_params(params: GenerationParams) -> SamplingSettings:
    """The sampling settings, or InvalidRequest naming the first bad parameter."""
    if params.max_new_tokens <= 0:
        raise InvalidRequest(f"max_new_tokens must be positive, got {params.max_new_tokens}")
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise InvalidRequest(f"temperature must be a finite number >= 0 (0 is greedy), got {params.temperature}")
    if not 0 < params.top_p <= 1:  # also false for NaN
        raise InvalidRequest(f"top_p must lie in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise InvalidRequest(f"top_k must be >= 0 (0 turns it off), got {params.top_k}")
    if params.n < 1:
        raise InvalidRequest(f"n must be >= 1, got {params.n}")
    if not 0 <= params.min_new_tokens <= params.max_new_tokens:
        raise InvalidRequest(
            f"min_new_tokens must lie in [0, max_new_tokens={params.max_new_tokens}], got {params.min_new_tokens}"
        )
    return SamplingSettings(
        max_new_tokens=params.max_new_tokens,
        temperature=float(params.temperature),
        top_p=float(params.top_p),
        top_k=params.top_k,
        stop_at_eos=not params.ignore_eos,
        min_new_tokens=params.min_new_tokens,
    )


class PolicyModel:
    """A causal LM and its tokenizer, with the weights version it is serving."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", dtype: str = "float32"):
        self.path = str(path)
        self.tokenizer, self.model = load_causal_lm_and_tokenizer(path, device, dtype)
        self.version = 0
        self.specs: dict[str, TensorSpec] = specs_of(self.model.state_dict())
        self.adapter = ServedAdapter(self.model, self.path, next(self.model.parameters()).dtype)
        self.max_context = context_length(self.model.config)
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)  # EOS, end of turn

    @property
    def device(self) -> str:
        """Where the sampling runs."""
        return str(self.model.device)

    # -- requests -------------------------------------------------------------------------------

    def encode(self, prompt: PromptInput, what: str) -> list[int]:
        ids = encode_prompt(self.tokenizer, prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        check_token_ids(ids, self.vocab_size, what)
        return ids

    def rows(self, prompts: Sequence[PromptInput], params: GenerationParams, max_rows: int | None = None) -> list[Row]:
        """Check a request and split it into rows; raises InvalidRequest."""
        check_item_count(len(prompts), None, "prompts")
        settings = check_params(params)
        check_item_count(len(prompts) * params.n, max_rows, "samples")  # prompts x n
        rows = []
        for p, prompt in enumerate(prompts):
            ids = self.encode(prompt, f"prompt {p}")
            check_fits_context(
                len(ids) + settings.max_new_tokens,
                self.max_context,
                f"prompt {p} plus max_new_tokens={settings.max_new_tokens}",
            )
            rows += [Row(ids, settings, params.seed, p * params.n + s, p) for s in range(params.n)]
        return rows

    @staticmethod
    def batch_key(row: Row) -> SamplingSettings:
        """Rows that may share a batch have equal keys: this loop decodes one setting at a time."""
        return row.settings

    def generate_rows(self, rows: Sequence[Row]) -> list[RowResult]:
        """One model batch; every row must have the same settings. Runs on the model thread."""
        (settings,) = {r.settings for r in rows}
        decoded = decode(
            self.model,
            [r.prompt_ids for r in rows],
            [row_generator(r.seed, r.index) for r in rows],
            settings,
            self.stop_ids,
            self.tokenizer.pad_token_id,
        )
        return [
            RowResult(
                d.token_ids,
                d.logprobs,
                d.finish_reason,
                self.tokenizer.decode(d.token_ids, skip_special_tokens=True),
                self.version,
            )
            for d in decoded
        ]

    @staticmethod
    def samples(rows: Sequence[Row], results: Sequence[RowResult]) -> list[Sample]:
        return [
            Sample(
                prompt_token_ids=row.prompt_ids,
                response_token_ids=out.token_ids,
                logprobs=out.logprobs,
                finish_reason=out.finish_reason,
                weights_version=out.weights_version,
                response_text=out.text,
                prompt_index=row.prompt_index,
            )
            for row, out in zip(rows, results, strict=True)
        ]

    # -- weights --------------------------------------------------------------------------------

    def check_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Every name, dtype and shape must match the loaded model (a partial state dict is fine); LoRA factors
        must fit the model and the replica's adapter layout (rlhf.policy.adapter)."""
        if not state_dict:
            raise InvalidRequest("empty state dict")
        try:
            kind = weights_kind(state_dict)
        except ValueError as err:
            raise InvalidRequest(str(err)) from None
        if kind == LORA:
            self.adapter.check(state_dict)
            return
        for name, (dtype, shape) in specs_of(state_dict).items():
            want = self.specs.get(name)
            if want is None:
                raise InvalidRequest(f"unknown tensor name {name!r}")
            if (dtype, shape) != want:
                raise InvalidRequest(
                    f"{name}: {dtype_name(dtype)} {list(shape)} does not match the model's "
                    f"{dtype_name(want[0])} {list(want[1])}"
                )

    def apply_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy checked tensors into the model (or, for LoRA factors, merge them into the base weights). Runs on
        the model thread, between batches."""
        if weights_kind(state_dict) == LORA:
            self.adapter.apply(state_dict)
        else:
            params = self.model.state_dict()  # shares storage with the model
            with torch.no_grad():
                for name, tensor in state_dict.items():
                    params[name].copy_(tensor)
            self.adapter.full_weights_applied()
        self.version = version

    def info(self, **fields) -> common_pb2.ModelInfo:
        return describe_model(self.model, self.tokenizer, self.path, weights_version=self.version, **fields)

"""pi_SFT behind the reference service and `LocalReference`: per-token log-probs of given ids.

The numbers come from rlhf.core.logprobs, the code the learner uses for log pi_RL, so the KL
term compares like with like.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from rlhf.core.checks import check_fits_context, check_item_count, check_token_ids
from rlhf.core.logprobs import response_logprobs_list
from rlhf.core.modeling import (
    context_length,
    describe_model,
    load_causal_lm_and_tokenizer,
    model_dir_version,
)
from rlhf.v1 import common_pb2

Item = tuple[Sequence[int], Sequence[int]]  # (prompt ids, response ids)


class ReferenceModel:
    """A frozen causal LM and its tokenizer."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", dtype: str = "float32"):
        self.path = str(path)
        self.tokenizer, self.model = load_causal_lm_and_tokenizer(path, device, dtype)
        self.model.requires_grad_(False)
        self.max_context = context_length(self.model.config)
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.model_version = model_dir_version(self.path)

    def check(self, items: Sequence[Item], max_items: int | None = None) -> list[tuple[list[int], list[int]]]:
        """The items as lists of ints, or InvalidRequest naming the first bad one."""
        check_item_count(len(items), max_items)
        checked = []
        for i, (prompt, response) in enumerate(items):
            prompt, response = [int(t) for t in prompt], [int(t) for t in response]
            check_token_ids(prompt, self.vocab_size, f"item {i}: prompt_token_ids")
            check_token_ids(response, self.vocab_size, f"item {i}: response_token_ids")
            check_fits_context(len(prompt) + len(response), self.max_context, f"item {i}: prompt + response")
            checked.append((prompt, response))
        return checked

    @torch.inference_mode()
    def logprobs(self, items: Sequence[Item]) -> list[list[float]]:
        """log pi_SFT(y_t | x, y_<t) per response token, for one model batch of checked items."""
        prompts, responses = zip(*items, strict=True)
        return response_logprobs_list(self.model, prompts, responses, self.tokenizer.pad_token_id)

    def info(self, **fields) -> common_pb2.ModelInfo:
        return describe_model(self.model, self.tokenizer, self.path, weights_version=0, **fields)

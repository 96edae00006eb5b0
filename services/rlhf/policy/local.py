"""LocalPolicy: the policy service's methods in-process, on the same sampling code.

The learner's single-process baseline and fast tests use it; it takes the same arguments and
gives the same samples as `PolicyClient` against a server on the same weights.

    policy = LocalPolicy("models/sft")
    samples = policy.generate(["Human: Describe cats.\\nAssistant:"], GenerationParams(seed=0))
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

import torch

from rlhf.core.batching import by_length_chunks
from rlhf.core.types import GenerationParams, Sample
from rlhf.policy.model import PolicyModel, PromptInput
from rlhf.v1 import common_pb2, policy_pb2


class LocalPolicy:
    """Generates in batches of up to max_batch_size rows, shortest prompts together. As in the service, new weights
    land between Generate calls (a lock), so no call mixes two versions, whatever threads call it."""

    def __init__(
        self, model_dir: str | os.PathLike, device: str = "auto", dtype: str = "float32", max_batch_size: int = 64
    ):
        self.policy = PolicyModel(model_dir, device=device, dtype=dtype)
        self.max_batch_size = max_batch_size
        self._lock = threading.Lock()

    def generate(self, prompts: Sequence[PromptInput], params: GenerationParams) -> list[Sample]:
        """Samples, prompt-major (n per prompt); raises InvalidRequest (a ValueError) on bad input."""
        with self._lock:
            rows = self.policy.rows(prompts, params)
            results = [None] * len(rows)
            for chunk in by_length_chunks([len(r.prompt_ids) for r in rows], self.max_batch_size):
                for i, out in zip(chunk, self.policy.generate_rows([rows[i] for i in chunk]), strict=True):
                    results[i] = out
            return self.policy.samples(rows, results)

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> policy_pb2.UpdateWeightsResponse:
        """Check every tensor against the model, then apply them all (or none, on a mismatch)."""
        self.policy.check_weights(state_dict)
        with self._lock:
            self.policy.apply_weights(state_dict, version)
        return policy_pb2.UpdateWeightsResponse(
            weights_version=version,
            tensors_updated=len(state_dict),
            bytes_received=sum(t.numel() * t.element_size() for t in state_dict.values()),
        )

    def model_info(self) -> common_pb2.ModelInfo:
        return self.policy.info(max_batch_size=self.max_batch_size)

"""In-process services for the loop's fast tests: the packages' own local twins, plus two helpers.

CallableReward shows that any function of (prompt, response) can be the reward; RestartingReplica
is a LocalPolicy that restarts (fresh from its model dir, weights version 0) at a chosen call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from rlhf.core.types import GenerationParams, Sample
from rlhf.policy.local import LocalPolicy
from rlhf.v1 import common_pb2


class CallableReward:
    def __init__(self, fn: Callable[[str, str], float]):
        self.fn = fn

    def score(self, items: Sequence[tuple[str, str]]) -> list[float]:
        return [self.fn(prompt, response) for prompt, response in items]

    def model_info(self) -> common_pb2.ModelInfo:
        return common_pb2.ModelInfo()


class RestartingReplica:
    def __init__(self, model_dir, restart_at_call: int):
        self.model_dir, self.restart_at_call = model_dir, restart_at_call
        self.replica = LocalPolicy(model_dir, device="cpu")
        self.generate_calls = 0

    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[Sample]:
        self.generate_calls += 1
        if self.generate_calls == self.restart_at_call:
            self.replica = LocalPolicy(self.model_dir, device="cpu")  # back to the SFT weights, version 0
        return self.replica.generate(prompts, params)

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int):
        return self.replica.update_weights(state_dict, version)

    def model_info(self) -> common_pb2.ModelInfo:
        return self.replica.model_info()

"""What the learner needs from each service. The gRPC clients and the in-process implementations
(`rlhf.policy.local.LocalPolicy`, ...) both satisfy these, so one loop runs against either. Each is named for
what the learner asks of it, apart from the servicers (`rlhf.policy.service.PolicyService`, ...) that serve it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from rlhf.core.types import GenerationParams, Sample
from rlhf.v1 import common_pb2


@runtime_checkable
class PolicySampler(Protocol):
    """pi_RL inference: samples responses, takes new weights."""

    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[Sample]: ...

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None: ...

    def model_info(self) -> common_pb2.ModelInfo: ...


@runtime_checkable
class RewardScorer(Protocol):
    """r_theta(x, y) on (prompt text, response text) pairs."""

    def score(self, items: Sequence[tuple[str, str]]) -> list[float]: ...

    def model_info(self) -> common_pb2.ModelInfo: ...


@runtime_checkable
class ReferenceLogprobs(Protocol):
    """log pi_SFT(y_t | x, y_<t) on (prompt ids, response ids) pairs."""

    def logprobs(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]: ...

    def model_info(self) -> common_pb2.ModelInfo: ...

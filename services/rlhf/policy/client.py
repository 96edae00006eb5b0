"""PolicyClient: rlhf.v1.PolicyInference from Python, with deadlines and retries on UNAVAILABLE.

with PolicyClient("localhost:50052") as policy:
    samples = policy.generate(["Human: Describe cats.\\nAssistant:"], GenerationParams(seed=0))
    policy.update_weights(model.state_dict(), version=1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from rlhf.core.client import BaseClient
from rlhf.core.types import GenerationParams, Sample
from rlhf.core.weights import DEFAULT_CHUNK_BYTES, serialized_weight_chunks
from rlhf.policy.convert import params_to_proto, prompts_to_proto, sample_from_proto
from rlhf.v1 import common_pb2, policy_pb2, policy_pb2_grpc


class PolicyClient(BaseClient):
    SERVICE = "rlhf.v1.PolicyInference"

    def __init__(self, target: str, options=None, **overrides):
        super().__init__(target, options, **overrides)
        self.stub = policy_pb2_grpc.PolicyInferenceStub(self.channel)
        # UpdateWeights with messages serialized by the codec itself (one copy of the data, not three)
        self._update_weights = self.channel.stream_unary(
            "/rlhf.v1.PolicyInference/UpdateWeights",
            request_serializer=None,
            response_deserializer=policy_pb2.UpdateWeightsResponse.FromString,
        )

    def generate(
        self, prompts: Sequence[str | Sequence[int]], params: GenerationParams, timeout: float | None = None
    ) -> list[Sample]:
        """n samples per prompt, prompt-major. Prompts are text or token ids."""
        request = policy_pb2.GenerateRequest(prompts=prompts_to_proto(prompts), params=params_to_proto(params))
        reply = self.stub.Generate(request, **self.call_kwargs(timeout))
        return [sample_from_proto(s) for s in reply.samples]

    def update_weights(
        self,
        state_dict: Mapping[str, torch.Tensor],
        version: int,
        timeout: float | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> policy_pb2.UpdateWeightsResponse:
        """Stream a full or partial state dict; the server applies all of it as `version`, or none."""
        chunks = serialized_weight_chunks(state_dict, version, chunk_bytes)
        return self._update_weights(chunks, **self.call_kwargs(timeout))

    def model_info(self, timeout: float | None = None) -> common_pb2.ModelInfo:
        return self.stub.GetModelInfo(common_pb2.GetModelInfoRequest(), **self.call_kwargs(timeout))

"""ReferenceClient: rlhf.v1.ReferencePolicy from Python, with deadlines and retries on UNAVAILABLE.

with ReferenceClient("localhost:50053") as reference:
    logprobs = reference.logprobs([(prompt_ids, response_ids)])
"""

from __future__ import annotations

from collections.abc import Sequence

from rlhf.core.client import BaseClient
from rlhf.v1 import common_pb2, reference_pb2, reference_pb2_grpc


class ReferenceClient(BaseClient):
    SERVICE = "rlhf.v1.ReferencePolicy"

    def __init__(self, target: str, options=None, **overrides):
        super().__init__(target, options, **overrides)
        self.stub = reference_pb2_grpc.ReferencePolicyStub(self.channel)

    def logprobs(
        self, items: Sequence[tuple[Sequence[int], Sequence[int]]], timeout: float | None = None
    ) -> list[list[float]]:
        """log pi_SFT(y_t | x, y_<t) for each (prompt ids, response ids) pair, one float per response token."""
        request = reference_pb2.LogProbsRequest(
            items=[reference_pb2.LogProbsItem(prompt_token_ids=p, response_token_ids=r) for p, r in items]
        )
        reply = self.stub.LogProbs(request, **self.call_kwargs(timeout))
        return [list(result.logprobs) for result in reply.results]

    def model_info(self, timeout: float | None = None) -> common_pb2.ModelInfo:
        return self.stub.GetModelInfo(common_pb2.GetModelInfoRequest(), **self.call_kwargs(timeout))

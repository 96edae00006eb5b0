"""rlhf.v1.ReferencePolicy: LogProbs batched across clients, and GetModelInfo.

    rlhf serve reference --model models/sft --port 50053

Pairs from concurrent requests are merged into model batches of similar length; each batch is
one right-padded forward pass through rlhf.core.logprobs.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from rlhf.core.servicer import ModelServicer
from rlhf.reference.config import ReferenceServiceConfig
from rlhf.reference.model import ReferenceModel
from rlhf.v1 import common_pb2, reference_pb2, reference_pb2_grpc

log = logging.getLogger("rlhf.reference")

Pair = tuple[list[int], list[int]]  # (prompt token ids, response token ids)


class ReferenceService(
    ModelServicer[ReferenceServiceConfig, ReferenceModel, Pair, list[float]], reference_pb2_grpc.ReferencePolicyServicer
):
    name = "reference"
    service_names = ("rlhf.v1.ReferencePolicy",)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        reference_pb2_grpc.add_ReferencePolicyServicer_to_server(self, server)

    async def load(self) -> None:
        c = self.config
        reference = await asyncio.to_thread(ReferenceModel, c.model, c.device, c.dtype)
        self.serve_batched(reference, reference.logprobs, length_of=lambda item: len(item[0]) + len(item[1]))
        log.info("reference loaded", extra={"model": c.model, "device": str(reference.model.device)})

    def describe(self, model: ReferenceModel) -> common_pb2.ModelInfo:
        return model.info()

    async def LogProbs(
        self, request: reference_pb2.LogProbsRequest, context: grpc.aio.ServicerContext
    ) -> reference_pb2.LogProbsResponse:
        reference = await self.loaded(context)
        pairs = [(item.prompt_token_ids, item.response_token_ids) for item in request.items]
        items = await self.checked(context, lambda: reference.check(pairs, self.config.max_items_per_request))
        rows = await self.batched(context, items)
        return reference_pb2.LogProbsResponse(
            results=[reference_pb2.LogProbsResult(logprobs=row) for row in rows], model_version=reference.model_version
        )

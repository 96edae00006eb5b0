"""rlhf.v1.ReferencePolicy: LogProbs batched across clients, and GetModelInfo.

    rlhf serve reference --model models/sft --port 50053

Pairs from concurrent requests are merged into model batches of similar length; each batch is
one right-padded forward pass through rlhf.core.logprobs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from rlhf.core.batching import BatcherClosed, DynamicBatcher, QueueFull
from rlhf.core.checks import InvalidRequest
from rlhf.reference.model import ReferenceModel
from rlhf.v1 import reference_pb2, reference_pb2_grpc

log = logging.getLogger("rlhf.reference")


@dataclass
class ReferenceServiceConfig:
    model: str
    device: str = "auto"
    dtype: str = "float32"  # float32: the KL term needs log-probs that agree with the learner's
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_items_per_request: int = 1024
    max_queue: int = 16384  # admission control: most pairs waiting for a batch; beyond, RESOURCE_EXHAUSTED


class ReferenceService(reference_pb2_grpc.ReferencePolicyServicer):
    name = "reference"
    service_names = ("rlhf.v1.ReferencePolicy",)

    def __init__(self, config: ReferenceServiceConfig):
        self.config = config
        self.reference: ReferenceModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.model_version = ""

    def add_to_server(self, server: grpc.aio.Server) -> None:
        reference_pb2_grpc.add_ReferencePolicyServicer_to_server(self, server)

    async def load(self) -> None:
        c = self.config
        reference = await asyncio.to_thread(ReferenceModel, c.model, c.device, c.dtype)
        self.model_version = reference.info().model_version
        self.batcher = DynamicBatcher(
            reference.logprobs,
            name="reference",
            max_batch_size=c.max_batch_size,
            max_wait_ms=c.max_wait_ms,
            length_of=lambda item: len(item[0]) + len(item[1]),
            max_queue=c.max_queue,
        )
        self.reference = reference  # last: until now every RPC answers UNAVAILABLE
        log.info("reference loaded", extra={"model": c.model, "device": str(reference.model.device)})

    async def _loaded(self, context) -> ReferenceModel:
        """The model, or UNAVAILABLE (which clients retry) while it loads: the port opens before that."""
        if self.reference is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the reference model is still loading")
        return self.reference

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def LogProbs(self, request: reference_pb2.LogProbsRequest, context) -> reference_pb2.LogProbsResponse:
        reference = await self._loaded(context)
        try:
            items = reference.check(
                [(item.prompt_token_ids, item.response_token_ids) for item in request.items],
                self.config.max_items_per_request,
            )
        except InvalidRequest as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        try:
            rows = await self.batcher.submit(items)
        except QueueFull as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        except BatcherClosed as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        except Exception as err:  # noqa: BLE001 - a model failure is the server's fault, not the caller's
            log.exception("log-probs failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"log-probs failed: {type(err).__name__}: {err}")
        return reference_pb2.LogProbsResponse(
            results=[reference_pb2.LogProbsResult(logprobs=row) for row in rows], model_version=self.model_version
        )

    async def GetModelInfo(self, request, context):
        reference, c = await self._loaded(context), self.config
        return reference.info(max_batch_size=c.max_batch_size, max_items_per_request=c.max_items_per_request)

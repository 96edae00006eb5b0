"""The RewardScoring gRPC service: Score and GetModelInfo over a dynamically batched reward model.

Requests are tokenized on the event loop (the same `encode_pair` as training), then their items
join one queue; the batcher cuts model batches of similar lengths across concurrent requests and
runs each forward on its single model thread under `torch.inference_mode`.

    rlhf serve reward --model models/rm --port 50051
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from rlhf.core.batching import BatcherClosed, DynamicBatcher
from rlhf.core.metrics import TRUNCATED_INPUTS
from rlhf.core.text import Encoded
from rlhf.reward.config import RewardServiceConfig
from rlhf.reward.model import RewardScorer
from rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc

log = logging.getLogger("rlhf.reward")

class RewardService(reward_pb2_grpc.RewardScoringServicer):
    """The servicer, plus the bootstrap hooks (load/close) of rlhf.core.server.Service."""

    name = "reward"
    service_names = (reward_pb2.DESCRIPTOR.services_by_name["RewardScoring"].full_name,)

    def __init__(self, config: RewardServiceConfig):
        self.config = config
        self.scorer: RewardScorer | None = None
        self.batcher: DynamicBatcher[Encoded, float] | None = None

    def add_to_server(self, server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardScoringServicer_to_server(self, server)

    async def load(self) -> None:
        config = self.config
        self.scorer = await asyncio.to_thread(RewardScorer.load, config.model, config.device, config.dtype)
        self.batcher = DynamicBatcher(
            self.scorer.forward,
            name=self.name,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            length_of=lambda e: len(e.prompt_ids) + len(e.response_ids),
        )
        # The first forward pays one-off costs (allocator, kernels); keep them out of the first request.
        await self.batcher.run_exclusive(lambda: self.scorer.forward([self.scorer.encode("warm", "up")]))
        log.info("reward model loaded", extra={"model": config.model, "device": str(self.scorer.device),
                                              "model_version": self.scorer.model_version})

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def Score(self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext):
        if self.batcher is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the reward model is still loading")
        count, limit = len(request.items), self.config.max_items_per_request
        if count == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "items is empty: send at least one item")
        if count > limit:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{count} items is over this server's limit of {limit} items per request (split the request)",
            )
        encoded = [self.scorer.encode(item.prompt, item.response) for item in request.items]
        truncated = [e.truncated for e in encoded]
        if any(truncated):
            TRUNCATED_INPUTS.labels(self.name).inc(sum(truncated))
        try:
            scores = await self.batcher.submit(encoded)
        except BatcherClosed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, never the server
            log.exception("scoring failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"scoring failed: {type(err).__name__}: {err}")
        return reward_pb2.ScoreResponse(scores=scores, model_version=self.scorer.model_version, truncated=truncated)

    async def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext):
        if self.scorer is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the reward model is still loading")
        return self.scorer.model_info(self.config.max_batch_size, self.config.max_items_per_request)

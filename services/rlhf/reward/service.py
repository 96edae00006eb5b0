"""The RewardScoring gRPC service: Score and GetModelInfo over a dynamically batched reward model.

The items of concurrent requests join one queue; the batcher cuts model batches of similar
(character) lengths from it and hands each to a model worker process (`--instances` of them, each
a batch at a time), which tokenizes it with two batched tokenizer calls (`encode_pairs`: the same
ids as training's `encode_pair`) and runs the forward under `torch.inference_mode`. The event
loop only moves messages.

    rlhf serve reward --model models/rm --port 50051
    rlhf serve reward --function mypkg.rewards:exact_match --port 50051   # rlhf.reward.function

With --function, a Python function takes the model workers' place, behind the same batcher.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from rlhf.core.batching import BatcherClosed, DynamicBatcher, QueueFull
from rlhf.core.metrics import TRUNCATED_INPUTS
from rlhf.reward.config import RewardServiceConfig
from rlhf.reward.function import FunctionScorer, RewardFunctionFailed
from rlhf.reward.worker import WorkerDied, WorkerPool
from rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc

log = logging.getLogger("rlhf.reward")


class RewardService(reward_pb2_grpc.RewardScoringServicer):
    """The servicer, plus the bootstrap hooks (load/close) of rlhf.core.server.Service."""

    name = "reward"
    service_names = (reward_pb2.DESCRIPTOR.services_by_name["RewardScoring"].full_name,)

    def __init__(self, config: RewardServiceConfig):
        self.config = config
        self.worker: WorkerPool | FunctionScorer | None = None
        self.batcher: DynamicBatcher[tuple[str, str], tuple[float, bool]] | None = None

    def add_to_server(self, server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardScoringServicer_to_server(self, server)

    async def load(self) -> None:
        config = self.config
        if config.function:
            self.worker = FunctionScorer(config.function)
        else:
            self.worker = await asyncio.to_thread(
                WorkerPool, config.model, config.device, config.dtype, config.instances
            )
        self.batcher = DynamicBatcher(
            self.worker.score_batch,  # the worker tokenizes the whole batch at once, then runs the forward
            name=self.name,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            # Buckets by characters: tokens are only known once the batch is tokenized.
            length_of=lambda item: len(item[0]) + len(item[1]),
            concurrency=1 if config.function else config.instances,
            max_queue=config.max_queue,
        )
        log.info(
            "reward model loaded",
            extra={
                "model": config.model or f"function:{config.function}",
                "device": self.worker.device,
                "model_version": self.worker.model_version,
            },
        )

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.close)

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
        try:
            results = await self.batcher.submit([(item.prompt, item.response) for item in request.items])
        except QueueFull as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        except BatcherClosed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        except WorkerDied as err:  # the pool restarts it; a retry will be served
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{err}; restarting it, retry")
        except RewardFunctionFailed as err:
            log.warning("reward function failed", extra={"error": str(err)})
            await context.abort(err.code, str(err))
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, never the server
            log.exception("scoring failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"scoring failed: {type(err).__name__}: {err}")
        truncated = [cut for _, cut in results]
        if any(truncated):
            TRUNCATED_INPUTS.labels(self.name).inc(sum(truncated))
        return reward_pb2.ScoreResponse(
            scores=[score for score, _ in results], model_version=self.worker.model_version, truncated=truncated
        )

    async def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext):
        if self.batcher is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the reward model is still loading")
        info = common_pb2.ModelInfo()
        info.CopyFrom(self.worker.info)
        info.max_batch_size, info.max_items_per_request = self.config.max_batch_size, self.config.max_items_per_request
        return info

"""The RewardScoring gRPC service: Score and GetModelInfo over a dynamically batched reward model.

The items of concurrent requests join one queue; the batcher cuts model batches of similar
(character) lengths from it and hands each to a model worker process (`--instances` of them, each
a batch at a time), which tokenizes it with two batched tokenizer calls (`encode_pairs`: the same
ids as training's `encode_pair`) and runs the forward under `torch.inference_mode`. The event
loop only moves messages.

    rlhf serve reward --model models/rm --port 50051
    rlhf serve reward --function mypkg.rewards:exact_match --port 50051   # rlhf.reward.function

With --function, a Python function takes the model workers' place, behind the same batcher.

An item whose prompt is a conversation (prompt_messages) is rendered here, before batching: its messages plus
an assistant message holding the response, with the reward model's own chat template (the policy's may differ),
split into the prompt (with the generation prompt) and what follows it, as `rlhf train rm` renders its data.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from rlhf.core.chat import (
    as_dicts,
    checked_request_messages,
    plain_prompt,
    render_completion,
    render_for_request,
    use_chat_template,
)
from rlhf.core.checks import InvalidRequest, check_item_count
from rlhf.core.metrics import TRUNCATED_INPUTS
from rlhf.core.servicer import ModelServicer
from rlhf.reward.config import RewardServiceConfig
from rlhf.reward.function import FunctionScorer
from rlhf.reward.worker import WorkerDied, WorkerPool
from rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc

log = logging.getLogger("rlhf.reward")

Scorer = WorkerPool | FunctionScorer
Pair = tuple[str, str]  # (prompt, response)
Scored = tuple[float, bool]  # (reward, truncated)


class RewardService(ModelServicer[RewardServiceConfig, Scorer, Pair, Scored], reward_pb2_grpc.RewardScoringServicer):
    """The servicer, plus the bootstrap hooks (load/close) of rlhf.core.server.Service."""

    name = "reward"
    service_names = ("rlhf.v1.RewardScoring",)
    retryable = (WorkerDied,)  # the pool restarts the process; a retry will be served

    def add_to_server(self, server: grpc.aio.Server) -> None:
        reward_pb2_grpc.add_RewardScoringServicer_to_server(self, server)

    tokenizer = None  # the reward model's, for rendering conversations (none with --function)

    async def load(self) -> None:
        config = self.config
        if config.function:
            scorer: Scorer = FunctionScorer(config.function)
        else:
            scorer = await asyncio.to_thread(WorkerPool, config.model, config.device, config.dtype, config.instances)
            self.tokenizer = await asyncio.to_thread(chat_tokenizer, config.model, config.chat_template)
        self.serve_batched(
            scorer,
            scorer.score_batch,  # the worker tokenizes the whole batch at once, then runs the forward
            # Buckets by characters: tokens are only known once the batch is tokenized.
            length_of=lambda item: len(item[0]) + len(item[1]),
            concurrency=1 if config.function else config.instances,
        )
        log.info(
            "reward model loaded",
            extra={
                "model": config.model or f"function:{config.function}",
                "device": scorer.device,
                "model_version": scorer.model_version,
            },
        )

    async def close(self) -> None:
        await super().close()
        if self.model is not None:
            await asyncio.to_thread(self.model.close)

    def describe(self, model: Scorer) -> common_pb2.ModelInfo:
        return model.info

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        scorer = await self.loaded(context)
        await self.checked(context, lambda: check_item_count(len(request.items), self.config.max_items_per_request))
        items = await self.checked(context, lambda: [self.item_of(x, f"item {i}") for i, x in enumerate(request.items)])
        results = await self.batched(context, items)
        truncated = [cut for _, cut in results]
        if any(truncated):
            TRUNCATED_INPUTS.labels(self.name).inc(sum(truncated))
        return reward_pb2.ScoreResponse(
            scores=[score for score, _ in results], model_version=scorer.model_version, truncated=truncated
        )

    def item_of(self, item: reward_pb2.ScoreItem, what: str) -> tuple:
        """(prompt, response) text for the model; (prompt, response, messages) for a function. Raises InvalidRequest."""
        if not item.HasField("prompt_messages"):
            return (item.prompt, item.response) if self.tokenizer else (item.prompt, item.response, None)
        if item.prompt:
            raise InvalidRequest(f"{what}: set prompt or prompt_messages, not both")
        conversation = checked_request_messages(item.prompt_messages.messages, f"{what} prompt_messages")
        if self.tokenizer is None:
            return (plain_prompt(conversation), item.response, as_dicts(conversation))
        reply = (("assistant", item.response),)
        return render_for_request(self.tokenizer, lambda t: render_completion(t, conversation, reply), what)


def chat_tokenizer(model: str, chat_template: str):
    """The reward model's tokenizer, with --chat-template's template when given (torch-free: the model itself
    lives in the worker processes)."""
    from rlhf.core.modeling import load_tokenizer

    return use_chat_template(load_tokenizer(model), chat_template)

"""RewardClient: the Python client of the reward service (deadlines, retries on UNAVAILABLE, auth, TLS).

from rlhf.reward import RewardClient

with RewardClient("localhost:50051") as reward:
    reward.wait_until_serving()
    scores = reward.score([("Human: Describe cats.\\nAssistant:", " cats are kind.")])
"""

from __future__ import annotations

from collections.abc import Sequence

from rlhf.core.client import BaseClient
from rlhf.v1 import common_pb2, reward_pb2, reward_pb2_grpc

Prompt = str | Sequence  # text, or a conversation: [{"role", "content"}, ...] or ((role, content), ...)


def score_item(prompt: Prompt, response: str) -> reward_pb2.ScoreItem:
    if isinstance(prompt, str):
        return reward_pb2.ScoreItem(prompt=prompt, response=response)
    return reward_pb2.ScoreItem(prompt_messages=conversation_to_proto(prompt), response=response)


def conversation_to_proto(messages: Sequence) -> common_pb2.Conversation:
    pairs = [(m["role"], m["content"]) if isinstance(m, dict) else m for m in messages]
    return common_pb2.Conversation(messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in pairs])


class RewardClient(BaseClient):
    """Scores (prompt, response) pairs; satisfies the learner's RewardScorer interface."""

    SERVICE = "rlhf.v1.RewardScoring"

    def __init__(self, target: str, options=None, **overrides):
        super().__init__(target, options, **overrides)
        self.stub = reward_pb2_grpc.RewardScoringStub(self.channel)
        self._items_per_request: int | None = None

    def score(self, items: Sequence[tuple[Prompt, str]], timeout: float | None = None) -> list[float]:
        """One reward per (prompt, response), in order; a prompt is text or a conversation (messages as dicts
        or (role, content) pairs), which the service renders with its own chat template. Large lists go as
        concurrent requests."""
        return list(self.score_detailed(items, timeout).scores)

    def score_detailed(
        self, items: Sequence[tuple[Prompt, str]], timeout: float | None = None
    ) -> reward_pb2.ScoreResponse:
        """The full response: scores, the model version, and which items were truncated."""
        if not items:
            return reward_pb2.ScoreResponse()
        limit = self._limit(timeout) if len(items) > 1 else 1
        requests = [
            reward_pb2.ScoreRequest(items=[score_item(p, r) for p, r in items[s : s + limit]])
            for s in range(0, len(items), limit)
        ]
        # Sent together, so the server batches them with each other and with other clients' items.
        futures = [self.stub.Score.future(request, **self.call_kwargs(timeout)) for request in requests]
        merged = reward_pb2.ScoreResponse()
        for future in futures:
            reply = future.result()
            merged.scores.extend(reply.scores)
            merged.truncated.extend(reply.truncated)
            merged.model_version = reply.model_version
        return merged

    def model_info(self, timeout: float | None = None) -> common_pb2.ModelInfo:
        return self.stub.GetModelInfo(common_pb2.GetModelInfoRequest(), **self.call_kwargs(timeout))

    def _limit(self, timeout: float | None) -> int:
        if self._items_per_request is None:
            self._items_per_request = self.model_info(timeout).max_items_per_request or 1024
        return self._items_per_request

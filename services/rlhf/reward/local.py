"""LocalReward: the reward model in this process, behind the same interface as RewardClient.

reward = LocalReward("models/rm", device="cpu")
reward.score([(prompt, response), ...])
"""

from __future__ import annotations

from collections.abc import Sequence

from rlhf.core.chat import parse_conversation, render_completion
from rlhf.core.reward_model import RewardScorer
from rlhf.v1 import common_pb2


class LocalReward:
    """Scores (prompt, response) pairs in-process, in length-sorted batches of `batch_size`."""

    def __init__(self, model_dir: str, device: str = "auto", dtype: str = "float32", batch_size: int = 64):
        self.scorer = RewardScorer.load(model_dir, device, dtype)
        self.batch_size = batch_size

    def score(self, items: Sequence[tuple[str | Sequence, str]]) -> list[float]:
        """As RewardClient.score: a conversation prompt is rendered with this reward model's chat template."""
        return self.scorer.score([self.as_text(p, r) for p, r in items], self.batch_size)

    def as_text(self, prompt: str | Sequence, response: str) -> tuple[str, str]:
        if isinstance(prompt, str):
            return prompt, response
        conversation = parse_conversation(
            [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in prompt], "score", "prompt"
        )
        return render_completion(self.scorer.tokenizer, conversation, (("assistant", response),))

    def model_info(self) -> common_pb2.ModelInfo:
        return self.scorer.model_info(max_batch_size=self.batch_size)

    def close(self) -> None:
        """Nothing to release; here so LocalReward and RewardClient are interchangeable."""

"""LocalReference: the reference service's methods in-process, on the same log-prob code."""

from __future__ import annotations

import os
from collections.abc import Sequence

from rlhf.core.batching import by_length_chunks
from rlhf.reference.model import Item, ReferenceModel
from rlhf.v1 import common_pb2


class LocalReference:
    def __init__(
        self, model_dir: str | os.PathLike, device: str = "auto", dtype: str = "float32", max_batch_size: int = 64
    ):
        self.reference = ReferenceModel(model_dir, device=device, dtype=dtype)
        self.max_batch_size = max_batch_size

    def logprobs(self, items: Sequence[Item]) -> list[list[float]]:
        """Per-token log pi_SFT of each response; raises InvalidRequest (a ValueError) on bad input."""
        checked = self.reference.check(items)
        results: list[list[float]] = [[] for _ in checked]
        for chunk in by_length_chunks([len(p) + len(r) for p, r in checked], self.max_batch_size):
            for i, row in zip(chunk, self.reference.logprobs([checked[i] for i in chunk]), strict=True):
                results[i] = row
        return results

    def model_info(self) -> common_pb2.ModelInfo:
        return self.reference.info(max_batch_size=self.max_batch_size)

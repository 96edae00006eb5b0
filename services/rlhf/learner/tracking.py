"""Per-step metrics to metrics.jsonl and TensorBoard, and rollouts to rollouts.jsonl.

On resume, entries past the checkpoint's step are dropped first, so after a SIGKILL no step
appears twice in any log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from rlhf.core.files import write_text_atomic


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only the lines whose `step` is <= last_step (and drop a torn last line); atomic."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by SIGKILL
    write_text_atomic(path, "".join(kept))


class RunLog:
    """metrics.jsonl + TensorBoard (out/tb) + optional rollouts.jsonl, all resumable at a step."""

    def __init__(self, out: Path, resume_step: int, log_rollouts: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.metrics_path, self.rollouts_path = out / "metrics.jsonl", out / "rollouts.jsonl"
        for path in (self.metrics_path, self.rollouts_path):
            truncate_jsonl(path, resume_step)
        self.log_rollouts = log_rollouts
        # purge_step: TensorBoard hides events at or after it that an earlier, killed run wrote.
        self.writer = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1)

    def metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        self._append(self.metrics_path, [{"step": step, **metrics}])

    def rollouts(self, step: int, rows: Iterable[Mapping]) -> None:
        if self.log_rollouts:
            self._append(self.rollouts_path, [{"step": step, **row} for row in rows])

    @staticmethod
    def _append(path: Path, rows: list[Mapping]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.writer.close()

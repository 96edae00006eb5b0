"""Models trained through `rlhf train`, once per session for each distinct setting: a test asking for a model
that another test already trained with the same command line gets that one's dir and output."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import rlhf


@dataclass(frozen=True)
class Trained:
    """A trained model's dir, and what its `rlhf train` printed on stdout (its held-out figures)."""

    dir: Path
    stdout: str


def settings_key(stage: str, model: Path, data: Path, flags: tuple[str, ...]) -> str:
    """A short hash of everything a `rlhf train` run depends on: stage, base model, data and flags (in order,
    since a repeated flag's last value wins)."""
    settings = json.dumps([stage, str(Path(model).resolve()), str(Path(data).resolve()), list(flags)])
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


class TrainedModels:
    """`rlhf train STAGE --model MODEL --data DATA FLAGS`, run once per distinct settings into root/<stage>-<key>.

    The base model and the data are the session's own files (their paths stand for their content), so the key
    needs no hash of what they hold.
    """

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[str, Trained] = {}

    def train(self, stage: str, model: Path, data: Path, *flags: str) -> Trained:
        key = f"{stage}-{settings_key(stage, model, data, flags)}"
        if key not in self.done:
            out = self.root / key
            run = rlhf("train", stage, "--model", str(model), "--data", str(data), "--out", str(out), *flags)
            self.done[key] = Trained(out, run.stdout)
        return self.done[key]

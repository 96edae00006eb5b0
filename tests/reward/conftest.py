"""Reward fixtures: a saved (untrained) reward-model dir."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny LM with a randomly initialised (seeded) one-output head, saved: fast, and deterministic to load."""
    import torch

    from rlhf.core.modeling import load_tokenizer
    from rlhf.reward.model import load_sequence_classifier

    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_sequence_classifier(tiny_model_dir, tokenizer, torch.device("cpu"), torch.float32)
    out = tmp_path_factory.mktemp("models") / "rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

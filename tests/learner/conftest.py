"""Learner test fixtures: the models the PPO runs serve, untrained or trained (once per session, in
tests/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture
def untrained(tiny_model_dir, synth_dir) -> SimpleNamespace:
    """The tiny model as SFT, reference, reward (random head) and critic: enough to exercise faults."""
    return SimpleNamespace(
        sft=tiny_model_dir,
        rm=tiny_model_dir,
        prompts=synth_dir / "prompts.jsonl",
        pretrain=synth_dir / "pretrain.jsonl",
    )


@pytest.fixture(scope="session")
def trained(sft_model, reward_model, synth_dir) -> SimpleNamespace:
    """The session's SFT and reward models (the demo's recipe; PPO in the tests as the demo's, only shorter)."""
    return SimpleNamespace(
        sft=sft_model.dir,
        rm=reward_model.dir,
        prompts=synth_dir / "prompts.jsonl",
        pretrain=synth_dir / "pretrain.jsonl",
    )

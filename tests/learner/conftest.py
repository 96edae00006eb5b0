"""Learner test fixtures: SFT and reward models trained through the CLI, shared by the acceptance runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.learner.test_learner_acceptance import rlhf


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
def trained(tiny_model_dir, synth_dir, tmp_path_factory, seed) -> SimpleNamespace:
    """SFT and reward models trained through the CLI on the synthetic task (one epoch each)."""
    from rlhf.toy.synthetic import write_task

    root = tmp_path_factory.mktemp("ppo-models")
    sft, rm = root / "sft", root / "rm"
    # The demo's recipe (rlhf.demo.pipeline): 3x the preferences, lr 1e-3, beta2 0.95 for the reward model;
    # PPO below as the demo's, only shorter.
    preferences = write_task(root / "rm-data", preference_scale=3)["preferences"]
    rlhf(
        "train",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(synth_dir / "sft.jsonl"),
        "--out",
        str(sft),
        "--lr",
        "3e-3",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--seed",
        str(seed),
    )
    rlhf(
        "train",
        "rm",
        "--model",
        str(sft),
        "--data",
        str(preferences),
        "--out",
        str(rm),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--adam-beta2",
        "0.95",
        "--max-length",
        "48",
        "--device",
        "cpu",
        "--seed",
        str(seed),
    )
    return SimpleNamespace(sft=sft, rm=rm, prompts=synth_dir / "prompts.jsonl", pretrain=synth_dir / "pretrain.jsonl")

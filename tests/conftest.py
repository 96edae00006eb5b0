"""Shared fixtures: the tiny model and the synthetic task, made once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLHF_LOG_FORMAT", "text")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A freshly made tiny GPT-2 (random weights) with its byte-level BPE tokenizer."""
    from rlhf.core.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """The synthetic task at full size (files are small; tests take what they need)."""
    from rlhf.core.synthetic import write_task

    out = tmp_path_factory.mktemp("data")
    write_task(out, seed=0)
    return out


@pytest.fixture
def port() -> int:
    from tests.helpers import free_port

    return free_port()

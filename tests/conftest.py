"""Shared fixtures: the tiny model and the synthetic task, made once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.certs import make_ca, make_leaf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLHF_LOG_FORMAT", "text")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A freshly made tiny GPT-2 (random weights) with its byte-level BPE tokenizer."""
    from rlhf.toy.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama-layout model whose ChatML template ends each turn with the special token <|im_end|>."""
    from rlhf.toy.tiny import TinyModelConfig, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", TinyModelConfig(layout="llama"))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """The synthetic task at full size (files are small; tests take what they need)."""
    from rlhf.toy.synthetic import write_task

    out = tmp_path_factory.mktemp("data")
    write_task(out, seed=0)
    return out


@pytest.fixture
def port() -> int:
    from tests.helpers import free_port

    return free_port()


@pytest.fixture(scope="session")
def seed() -> int:
    """The seed of every learning test: $RLHF_TEST_SEED, default 0. benchmarks/seed_sweep.py runs the
    learning tests over several seeds; each test's thresholds sit well below the worst seed seen there."""
    return int(os.environ.get("RLHF_TEST_SEED", "0"))


@pytest.fixture
def record_figures(request, seed):
    """record_figures(figures, bounds): a learning test's measured figures, and the bound each must clear
    (a figure named in `bounds` must reach it; one ending in `_max` must stay at or below it). Appended as one
    JSON line to $RLHF_SWEEP_RECORD when set (benchmarks/seed_sweep.py reads it); always printed."""
    import json

    def record(figures: dict[str, float], bounds: dict[str, float]) -> None:
        row = {"test": request.node.nodeid, "seed": seed, "figures": figures, "bounds": bounds}
        print("figures:", json.dumps(row))
        if path := os.environ.get("RLHF_SWEEP_RECORD"):
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    return record


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory) -> Path:
    """Two CAs; a server cert for localhost/127.0.0.1 and a client cert from `ca`, a client cert from `other-ca`."""
    cwd = tmp_path_factory.mktemp("tls")
    ca, other = make_ca(cwd, "ca"), make_ca(cwd, "other-ca")
    make_leaf(cwd, "server", ca, ("localhost", "127.0.0.1"))
    make_leaf(cwd, "client", ca)
    make_leaf(cwd, "stranger", other)
    return cwd


@pytest.fixture(scope="session")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny LM with a randomly initialised (seeded) one-output head, saved: fast, and deterministic to load."""
    import torch

    from rlhf.core.modeling import load_tokenizer
    from rlhf.core.reward_model import load_sequence_classifier

    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_sequence_classifier(tiny_model_dir, tokenizer, torch.device("cpu"), torch.float32)
    out = tmp_path_factory.mktemp("models") / "rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vllm_policy(tiny_model_dir, tmp_path_factory):
    """One `rlhf serve policy --engine vllm` process on the tiny model for the session (tests.engines); a test
    that changes its weights first puts the model dir's back (tests.engines.with_model_dir_weights)."""
    from tests.engines import served_policy

    log = tmp_path_factory.mktemp("vllm") / "policy.log"
    with served_policy("vllm", tiny_model_dir, log, max_wait_ms=50) as served:
        yield served

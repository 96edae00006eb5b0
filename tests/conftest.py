"""Shared fixtures: the tiny model, the synthetic task and the models trained from them, made once per test
session, offline.

Time limits. Every time limit in the tests is a hang guard, never a performance assertion: it stops a test that
hangs, and no load a shared machine or CI runner puts beside the suite may reach it.
- pytest-timeout's limit (pyproject: `timeout`, with `timeout_func_only`) times a test's own body only, never its
  fixtures' setup: a session fixture's cost falls on whichever test asks for it first.
- Fixtures guard what they start: each `rlhf train` (tests.helpers.rlhf) and each service's wait for SERVING
  (tests.helpers.Service, CliServer) has its own hang guard.
- A limit inside a test sits at least ~10x above what it guards takes on an idle 2-core machine.
- $RLHF_TEST_TIME_SCALE (default 1) multiplies all of them (tests.helpers.hang_guard, and pytest-timeout's limit
  below), for a machine slower or busier than any they were set on.

Trained models. The SFT, reward and LoRA models that several tests need are trained once per session through
`trained_models` (tests/trained_models.py), in a cache dir keyed by a hash of their settings: a test that needs
one with other settings trains it there too, and no test trains what another already made.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.certs import make_ca, make_leaf
from tests.helpers import TIME_SCALE, hang_guard
from tests.trained_models import Trained, TrainedModels

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


def pytest_collection_modifyitems(config, items):
    """$RLHF_TEST_TIME_SCALE scales pytest-timeout's hang guard too: the ini's, or a test's own timeout mark."""
    if TIME_SCALE == 1:
        return
    for item in items:
        marker = item.get_closest_marker("timeout")
        own = marker and (marker.args[0] if marker.args else marker.kwargs.get("timeout"))
        seconds = float(own or config.getini("timeout") or 0)
        if seconds:
            item.add_marker(pytest.mark.timeout(hang_guard(seconds)), append=False)


# The demo's recipe (rlhf.demo.pipeline) for its SFT and reward models; the LoRA models differ from them only in
# their LoRA flags (a reward model's LoRA adapters take a higher learning rate).
SFT_FLAGS = ("--lr", "3e-3", "--batch-size", "32", "--device", "cpu")
RM_FLAGS = ("--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--adam-beta2", "0.95", "--max-length", "48")
RM_FLAGS += ("--device", "cpu")
LORA_SFT_FLAGS = ("--lora-r", "8")
LORA_RM_FLAGS = ("--lora-r", "8", "--lr", "3e-3")


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory) -> TrainedModels:
    """`rlhf train` run once per distinct settings in this session (see tests/trained_models.py)."""
    return TrainedModels(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def rm_preferences(tmp_path_factory) -> Path:
    """The synthetic task's preferences at 3x: what the demo's reward model trains on."""
    from rlhf.toy.synthetic import write_task

    return write_task(tmp_path_factory.mktemp("rm-data"), preference_scale=3)["preferences"]


@pytest.fixture(scope="session")
def sft_model(trained_models, tiny_model_dir, synth_dir, seed) -> Trained:
    """The tiny model after SFT on the synthetic demonstrations (one epoch)."""
    return trained_models.train("sft", tiny_model_dir, synth_dir / "sft.jsonl", *SFT_FLAGS, "--seed", str(seed))


@pytest.fixture(scope="session")
def reward_model(trained_models, sft_model, rm_preferences, seed) -> Trained:
    """A reward model trained from `sft_model` on `rm_preferences` (one epoch)."""
    return trained_models.train("rm", sft_model.dir, rm_preferences, *RM_FLAGS, "--seed", str(seed))


@pytest.fixture(scope="session")
def lora_sft_model(trained_models, tiny_model_dir, synth_dir, seed) -> Trained:
    """`sft_model`'s training with LoRA r 8: the adapter dir, and the merged model in its merged/."""
    flags = (*SFT_FLAGS, *LORA_SFT_FLAGS, "--seed", str(seed))
    return trained_models.train("sft", tiny_model_dir, synth_dir / "sft.jsonl", *flags)


@pytest.fixture(scope="session")
def lora_reward_model(trained_models, sft_model, rm_preferences, seed) -> Trained:
    """`reward_model`'s training with LoRA r 8 (on the same SFT model): the adapter dir, and merged/."""
    flags = (*RM_FLAGS, *LORA_RM_FLAGS, "--seed", str(seed))
    return trained_models.train("rm", sft_model.dir, rm_preferences, *flags)


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

"""`rlhf train sft` and `rlhf train rm` under torchrun: two ranks (FSDP2 over gloo, on the CPU) train what one
process trains on the same batches, and write the same dirs.

The tiny model here has dropout off: its random masks would fall on other rows under two ranks. What is left
between one process and two is float rounding (each rank sums its share of a batch, padded to its own width).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.core.reward_model import RewardScorer
from rlhf.training.preferences import completions, load_rankings, split_rankings
from tests.helpers import RLHF, TRAINING_HANG_GUARD_S, free_port, hang_guard
from tests.policy.fsdp_step import every_step

pytestmark = pytest.mark.slow

STEP_SCRIPT = Path(__file__).with_name("fsdp_step.py")
# One step on the same global batch (tests/policy/fsdp_step.py), measured: the gradients agree to 2e-7 of their
# largest entry, the batch losses to 1e-7 and the clipped norm (summed from the shards) to 2e-6, relative; AdamW's
# first step divides each gradient entry by its own size, so entries near 0 turn rounding into up to 1e-3 of a step
# (lr 1e-2: 9e-6) in the weights.
GRAD_RTOL, LOSS_RTOL, STEP_ATOL = 1e-5, 1e-6, 1e-4
# Whole runs (10 SFT steps; 30 reward-model steps over 2 epochs), two ranks against one process, measured over
# seeds 0-4 with and without LoRA: SFT's held-out loss within 8e-8 (relative), its weights within 7e-6; the reward
# model's held-out accuracy the same, its mean reward before normalization within 2.5e-4 and its weights within
# 5.4e-4 (as far as one process on 1 and on 2 threads lands from itself: 2e-4 and 3.2e-4). The bounds leave >= 9x.
SFT_LOSS_RTOL, SFT_WEIGHTS_ATOL, RM_MEAN_ATOL, RM_WEIGHTS_ATOL = 1e-5, 1e-4, 5e-3, 5e-3
SFT_FLAGS = ["--batch-size", "16", "--lr", "2e-3", "--eval-fraction", "0.2", "--device", "cpu", "--seed", "0"]
RM_FLAGS = [
    "--batch-size",
    "8",
    "--lr",
    "3e-3",
    "--epochs",
    "2",
    "--eval-fraction",
    "0.2",
    "--device",
    "cpu",
    "--seed",
    "0",
    "--adam-beta2",
    "0.95",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RLHF_LOG_FORMAT": "json"}


def torchrun(*args: str, ranks: int = 2) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(ranks),
        "--master-port",
        str(free_port()),
        *args,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=hang_guard(TRAINING_HANG_GUARD_S), env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def train(stage: str, out: Path, *flags: str, ranks: int) -> subprocess.CompletedProcess:
    """`rlhf train STAGE` in one process (ranks 1) or under torchrun."""
    args = ["train", stage, *flags, "--out", str(out)]
    if ranks > 1:
        return torchrun("-m", "rlhf", *args, ranks=ranks)
    run = subprocess.run(
        [*RLHF, *args], capture_output=True, text=True, timeout=hang_guard(TRAINING_HANG_GUARD_S), env=ENV
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def logged(run: subprocess.CompletedProcess, message: str) -> list[dict]:
    """The JSON log records with this message (one per rank that logged it)."""
    records = []
    for line in run.stderr.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("msg") == message:
            records.append(record)
    return records


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    from rlhf.toy.synthetic import write_task
    from rlhf.toy.tiny import TinyModelConfig, make_tiny_model

    root = tmp_path_factory.mktemp("distributed")
    model = make_tiny_model(root / "tiny", TinyModelConfig(n_embd=64))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}))
    data = write_task(root / "data", seed=0, scale=0.1)
    return {"root": root, "model": model, "sft": data["sft"], "preferences": data["preferences"]}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], relative: bool = False) -> float:
    """The largest entry of a - b over all tensors; relative: divided by the largest entry of a."""
    assert a.keys() == b.keys()
    scale = max(float(t.abs().max()) for t in a.values()) if relative else 1.0
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def test_one_step_on_two_ranks_is_the_one_process_step(work):
    """The gradient of a global batch split over two ranks (unevenly: 3 + 2 rows; or 1 + none, the empty rank
    running a weight-0 pass) is the one-process gradient, through clipping and an AdamW step."""
    out = work["root"] / "steps.pt"
    torchrun(str(STEP_SCRIPT), str(work["model"]), str(work["sft"]), str(work["preferences"]), str(out))
    two = torch.load(out)
    one = every_step(str(work["model"]), str(work["sft"]), str(work["preferences"]))
    for name in one:
        assert two[name]["loss"] == pytest.approx(one[name]["loss"], rel=LOSS_RTOL), name
        assert two[name]["norm"] == pytest.approx(one[name]["norm"], rel=GRAD_RTOL), name
        assert max_difference(one[name]["grads"], two[name]["grads"], relative=True) < GRAD_RTOL, name
        assert max_difference(one[name]["weights"], two[name]["weights"]) < STEP_ATOL, name


def weights(path: Path, kind: str = "causal-lm") -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    return dict(auto.from_pretrained(path).state_dict())


def assert_same_dirs(one: Path, two: Path, kind: str, atol: float) -> None:
    """The same files; the same weights within atol, in the model dir (merged, with LoRA) and in the adapter."""
    from safetensors.torch import load_file

    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    lora = (one / "adapter_model.safetensors").is_file()
    if lora:
        adapters = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
        assert max_difference(*adapters) < atol
    assert (
        max_difference(weights(one / "merged" if lora else one, kind), weights(two / "merged" if lora else two, kind))
        < atol
    )


@pytest.mark.parametrize("lora", [[], ["--lora-r", "4"]], ids=["full", "lora"])
def test_sft_on_two_ranks_matches_one_process(work, lora, tmp_path):
    flags = ["--model", str(work["model"]), "--data", str(work["sft"]), *SFT_FLAGS, *lora]
    (one,) = logged(train("sft", tmp_path / "one", *flags, ranks=1), "sft done")
    (two,) = logged(train("sft", tmp_path / "two", *flags, ranks=2), "sft done")  # rank 0 alone logs
    assert two["eval_loss_before"] == pytest.approx(one["eval_loss_before"], rel=SFT_LOSS_RTOL)
    assert two["eval_loss_after"] == pytest.approx(one["eval_loss_after"], rel=SFT_LOSS_RTOL)
    assert one["eval_loss_after"] < one["eval_loss_before"]
    assert_same_dirs(tmp_path / "one", tmp_path / "two", "causal-lm", SFT_WEIGHTS_ATOL)


@pytest.mark.parametrize("lora", [[], ["--lora-r", "4"]], ids=["full", "lora"])
def test_rm_on_two_ranks_matches_one_process_and_saves_its_mean_0_normalization(work, lora, tmp_path):
    flags = ["--model", str(work["model"]), "--data", str(work["preferences"]), *RM_FLAGS, *lora]
    runs = train("rm", tmp_path / "one", *flags, ranks=1), train("rm", tmp_path / "two", *flags, ranks=2)
    (accuracy_1, count_1), (accuracy_2, count_2) = (
        re.search(r"held-out pairwise accuracy: ([0-9.]+) \((\d+)", run.stdout).groups() for run in runs
    )
    assert count_1 == count_2  # the same held-out comparisons, a near-tie at most ordered the other way
    assert float(accuracy_2) == pytest.approx(float(accuracy_1), abs=1.5 / int(count_1))
    (one,), (two,) = (logged(run, "normalized") for run in runs)
    assert two["reference_mean_before"] == pytest.approx(one["reference_mean_before"], abs=RM_MEAN_ATOL)
    assert abs(two["reference_mean_after"]) < 1e-5 and two["folded"] == one["folded"]
    train_set, _ = split_rankings(load_rankings(str(work["preferences"])), 0.2, 0)  # the split `train rm` made
    reference = completions(train_set)
    for name in ["two", "two/merged"] if lora else ["two"]:  # adapter and merged dir: both hold the offset
        mean = sum(RewardScorer.load(tmp_path / name, device="cpu").score(reference)) / len(reference)
        assert abs(mean) < 1e-4, (name, mean)
    assert_same_dirs(tmp_path / "one", tmp_path / "two", "score", RM_WEIGHTS_ATOL)

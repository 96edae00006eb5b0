"""`rlhf train ppo` refuses bad runs in one line before it loads or dials anything, and
`rlhf learner status` says which step is done and which is under way."""

from __future__ import annotations

import os
import re
import subprocess
from types import SimpleNamespace

import pytest

from rlhf.learner.cli import describe_progress
from rlhf.toy.processes import RLHF_COMMAND, free_port
from tests.helpers import hang_guard


def train_ppo(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    # Nothing listens at these addresses and no model is there: each refusal below must come first.
    nowhere = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    command = [
        *RLHF_COMMAND,
        "train",
        "ppo",
        "--model",
        str(tmp_path / "no-model"),
        "--policy",
        nowhere[0],
        "--reward",
        nowhere[1],
        "--reference",
        nowhere[2],
        "--port",
        "0",
        *flags,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=hang_guard(600))


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Human: Describe cats.\\nAssistant:"}\n')
    return path


@pytest.mark.parametrize(
    "case",
    [
        "earlier run",
        "resume without checkpoint",
        "resume and overwrite",
        "missing prompts",
        "empty prompts",
        "prompts without the field",
    ],
)
def test_bad_runs_are_refused_in_one_line_before_anything_loads(tmp_path, prompts, case):
    out = tmp_path / "run"
    flags = ["--prompts", str(prompts), "--out", str(out)]
    if case == "earlier run":
        out.mkdir()
        (out / "metrics.jsonl").write_text('{"step": 1}\n')
        expected = (
            f"rlhf: error: --out {out} holds an earlier run: continue it with --resume, choose a new --out, "
            "or start over with --overwrite"
        )
    elif case == "resume without checkpoint":
        flags.append("--resume")
        expected = f"rlhf: error: --resume: no checkpoint under {out / 'checkpoints'}"
    elif case == "resume and overwrite":
        flags += ["--resume", "--overwrite"]
        expected = "rlhf: error: --resume and --overwrite exclude each other"
    elif case == "missing prompts":
        flags[1] = str(tmp_path / "nope.jsonl")
        expected = f"rlhf: error: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory"
    elif case == "empty prompts":
        prompts.write_text("\n")
        expected = f"rlhf: error: {prompts} holds no prompts"
    else:
        prompts.write_text('{"prompt": "Human: hi\\nAssistant:"}\n{"prompt": 3}\n')
        expected = f'rlhf: error: {prompts}:2: expected a string "prompt" field (or a list of messages)'
    result = train_ppo(tmp_path, *flags)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [expected], result.stderr


def status(step: int, phase: str, total: int = 40) -> SimpleNamespace:
    return SimpleNamespace(step=step, total_steps=total, phase=phase)


def test_status_says_which_step_is_done_and_which_is_under_way():
    assert describe_progress(status(3, "update")) == "3/40 steps done; step 4: update"
    assert describe_progress(status(3, "generate")) == "3/40 steps done; step 4: generate"
    assert describe_progress(status(3, "checkpoint")) == "3/40 steps done; checkpoint"
    assert describe_progress(status(0, "weight_sync")) == "0/40 steps done; step 1: weight_sync"
    assert describe_progress(status(40, "done")) == "40/40 steps done"


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_training_data_is_read_before_the_model_loads(tmp_path, stage):
    data = tmp_path / "data.jsonl"
    data.write_text("\n")
    command = [
        *RLHF_COMMAND,
        "train",
        stage,
        "--model",
        str(tmp_path / "no-model"),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=hang_guard(600))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and str(data) in lines[0] and "no-model" not in lines[0], lines


def test_an_uncached_hub_name_is_one_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "response": " b"}\n')
    command = [
        *RLHF_COMMAND,
        "train",
        "sft",
        "--model",
        "someorg/not-cached-here",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=hang_guard(600), env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr  # no Hugging Face warning before it
    assert lines[0].startswith("rlhf: error: cannot load tokenizer from someorg/not-cached-here")


def test_train_grpo_defaults_are_grpos_own_recipe():
    # One pass of one minibatch per batch (DeepSeekMath; TRL's num_iterations=1), the k3 KL in the loss with its
    # ratio correction, beta 0.1: not PPO's 4 epochs x 4 minibatches with the k1 KL in the reward
    from rlhf.cli import build_parser

    required = ["--model", "m", "--policy", "p:1", "--reward", "r:1", "--reference", "f:1", "--prompts", "x"]
    grpo = build_parser().parse_args(["train", "grpo", *required, "--out", "o"])
    ppo = build_parser().parse_args(["train", "ppo", *required, "--out", "o"])
    recipe = {
        "advantage_estimator": "grpo",
        "samples_per_prompt": 4,
        "ppo_epochs": 1,
        "num_minibatches": 1,
        "kl_in": "loss",
        "kl_estimator": "k3",
        "kl_coef": 0.1,
        "kl_ratio_correction": True,
    }
    assert {name: getattr(grpo, name) for name in recipe} == recipe
    assert (ppo.ppo_epochs, ppo.num_minibatches, ppo.kl_in, ppo.kl_estimator, ppo.kl_coef) == (
        4,
        4,
        "reward",
        "k1",
        0.05,
    )
    # --help shows them
    shown = subprocess.run(
        [*RLHF_COMMAND, "train", "grpo", "--help"], capture_output=True, text=True, timeout=hang_guard(600)
    )
    sections = {part.split()[0]: " ".join(part.split()) for part in re.split(r"\n  (?=--)", shown.stdout)[1:]}
    for flag, default in [("--ppo-epochs", 1), ("--num-minibatches", 1), ("--kl-in", "loss"), ("--kl-coef", 0.1)]:
        assert f"(default {default})" in sections[flag], sections[flag]
    assert "(default k3)" in sections["--kl-estimator"]

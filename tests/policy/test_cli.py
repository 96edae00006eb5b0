"""The policy commands as separate processes: `rlhf train sft` teaches responses that `rlhf serve policy`
then produces, asked through `rlhf generate` and the Python client."""

import json
import os
import subprocess

import pytest

from rlhf.core.modeling import load_tokenizer
from rlhf.core.text import encode_prompt
from rlhf.core.types import GenerationParams
from rlhf.policy.client import PolicyClient
from tests.helpers import RLHF, TRAINING_HANG_GUARD_S, CliServer, hang_guard
from tests.training.test_sft import taught_examples


@pytest.mark.slow
def test_train_serve_and_generate_through_the_cli(tiny_model_dir, synth_dir, tmp_path, seed, record_figures):
    taught = taught_examples(synth_dir)
    data = tmp_path / "taught.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in taught))
    sft = tmp_path / "sft"
    trained = subprocess.run(
        [
            *RLHF,
            "train",
            "sft",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(sft),
            "--epochs",
            "60",
            "--lr",
            "3e-3",
            "--batch-size",
            "8",
            "--eval-fraction",
            "0",
            "--device",
            "cpu",
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=hang_guard(TRAINING_HANG_GUARD_S),
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # a tiny model trains faster on one thread than on a busy two
    )
    assert trained.returncode == 0, trained.stderr
    assert f"wrote {sft}" in trained.stdout

    tokenizer = load_tokenizer(sft)
    serve = ["serve", "policy", "--model", str(sft), "--device", "cpu"]
    with CliServer(serve, log_path=tmp_path / "policy.log") as server:
        generate = [
            *RLHF,
            "generate",
            "--target",
            server.target,
            "--prompt",
            taught[0]["prompt"],
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
        ]
        text = subprocess.run(generate, capture_output=True, text=True, check=True).stdout
        lines = subprocess.run([*generate, "--json", "--n", "2"], capture_output=True, text=True, check=True).stdout
        bad = subprocess.run([*generate, "--top-p", "0"], capture_output=True, text=True)
        with PolicyClient(server.target) as policy:
            every = policy.generate(
                [row["prompt"] for row in taught], GenerationParams(temperature=0, max_new_tokens=24)
            )
    # the tuned model produces the taught responses, each closed by EOS
    taught_fraction = sum(s.response_text == row["response"] for s, row in zip(every, taught, strict=True))
    taught_fraction /= len(taught)
    record_figures({"taught_fraction": taught_fraction}, {"taught_fraction": 1.0})
    assert [s.response_text for s in every] == [row["response"] for row in taught]
    assert {s.finish_reason for s in every} == {"eos"}
    assert text == taught[0]["response"] + "\n"
    samples = [json.loads(line) for line in lines.splitlines()]
    # Greedy: the n samples agree token for token. Their log-probs come from different rows of one
    # batch, whose float kernels may differ in the last bits (AVX2 vs AVX-512), so those get a tolerance.
    assert len(samples) == 2
    assert {k: v for k, v in samples[0].items() if k != "logprobs"} == {
        k: v for k, v in samples[1].items() if k != "logprobs"
    }
    assert samples[0]["logprobs"] == pytest.approx(samples[1]["logprobs"], abs=1e-4)
    assert set(samples[0]) == {
        "response",
        "prompt_token_ids",
        "response_token_ids",
        "logprobs",
        "finish_reason",
        "weights_version",
    }
    assert samples[0]["response"] == taught[0]["response"] and samples[0]["finish_reason"] == "eos"
    assert samples[0]["prompt_token_ids"] == encode_prompt(tokenizer, taught[0]["prompt"])
    assert samples[0]["response_token_ids"][-1] == tokenizer.eos_token_id and samples[0]["weights_version"] == 0
    assert len(samples[0]["logprobs"]) == len(samples[0]["response_token_ids"])
    assert bad.returncode == 2 and bad.stderr.startswith(
        f"rlhf: error: {server.target} (generate): INVALID_ARGUMENT: top_p must lie in (0, 1]"
    )

"""DPO, cDPO and IPO: the losses against their formulas, the two sources of log pi_ref, and a run through the CLI
against a reference service (a separate process) that raises the synthetic task's ground truth."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.core.text import encode_pair
from rlhf.core.types import GenerationParams
from rlhf.toy.synthetic import ground_truth_score
from rlhf.training.dpo import DPOConfig, dpo_loss, reference_logprobs
from rlhf.training.losses import ipo_loss, preference_logits, sigmoid_loss
from tests.helpers import CliServer, rlhf

# Bound set well inside the worst of seeds 0-2 (benchmarks/seed_sweep.py --only dpo: gains +0.23 to +0.38).
DPO_TRUTH_GAIN = 0.15


def test_the_losses_match_their_formulas():
    # h = (-1 - -2) - (-3 - -2.5) = 1 + 0.5 = 1.5
    h = preference_logits(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]))
    assert h.item() == pytest.approx(1.5)
    # DPO, beta 0.1: -log sigma(0.15) = log(1 + e^-0.15)
    assert sigmoid_loss(h, 0.1).item() == pytest.approx(math.log1p(math.exp(-0.15)), rel=1e-6)
    # cDPO, e = 0.1: 0.9 log(1 + e^-0.15) + 0.1 log(1 + e^0.15)
    expected = 0.9 * math.log1p(math.exp(-0.15)) + 0.1 * math.log1p(math.exp(0.15))
    assert sigmoid_loss(h, 0.1, 0.1).item() == pytest.approx(expected, rel=1e-6)
    # IPO, beta 0.1: (1.5 - 1 / 0.2)^2 = (1.5 - 5)^2 = 12.25
    assert ipo_loss(h, 0.1).item() == pytest.approx(12.25)
    # at h = 0 (pi = pi_ref) DPO's loss is log 2, and its gradient pushes h up by beta / 2
    zero = torch.zeros(2, requires_grad=True)
    loss = dpo_loss(zero, DPOConfig(beta=0.5))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2))
    assert zero.grad.tolist() == pytest.approx([-0.125, -0.125])  # -beta/2 per item, mean over 2


@pytest.fixture(scope="module")
def reference_server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "reference.log"
    with CliServer(["serve", "reference", "--model", str(tiny_model_dir), "--device", "cpu"], log_path=log) as proc:
        yield proc


def test_service_and_local_reference_give_the_same_loss(tiny_model_dir, synth_dir, reference_server):
    from rlhf.core.modeling import load_tokenizer
    from rlhf.reference.client import ReferenceClient
    from rlhf.reference.local import LocalReference

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [json.loads(line) for line in (synth_dir / "preferences.jsonl").read_text().splitlines()]
    pairs = [row for row in rows if "chosen" in row][:16]
    encoded = [encode_pair(tokenizer, r["prompt"], r[key], 64) for r in pairs for key in ("chosen", "rejected")]
    policy = torch.linspace(-30, -10, len(encoded))  # any fixed log pi; the reference is what differs
    for mean in (False, True):
        with ReferenceClient(reference_server.target) as client:
            remote = reference_logprobs(encoded, client, mean, chunk=5)
        local = reference_logprobs(encoded, LocalReference(tiny_model_dir, device="cpu"), mean)
        h = [preference_logits(policy[0::2], policy[1::2], ref[0::2], ref[1::2]) for ref in (remote, local)]
        for config in (DPOConfig(beta=0.1), DPOConfig(beta=0.1, label_smoothing=0.2), DPOConfig(loss="ipo")):
            assert dpo_loss(h[0], config).item() == pytest.approx(dpo_loss(h[1], config).item(), rel=1e-5)


def mean_ground_truth(model_dir, prompts: list[str]) -> float:
    from rlhf.policy.local import LocalPolicy

    samples = LocalPolicy(str(model_dir), device="cpu").generate(
        prompts, GenerationParams(max_new_tokens=12, n=4, seed=1234)
    )
    return sum(ground_truth_score(prompts[s.prompt_index], s.response_text) for s in samples) / len(samples)


@pytest.mark.slow
def test_dpo_through_the_cli_raises_the_ground_truth(
    sft_model, rm_preferences, synth_dir, tmp_path, seed, record_figures
):
    sft, dpo = sft_model.dir, tmp_path / "dpo"
    with CliServer(
        ["serve", "reference", "--model", str(sft), "--device", "cpu"], log_path=tmp_path / "reference.log"
    ) as reference:
        out = rlhf(
            "train",
            "dpo",
            "--model",
            str(sft),
            "--data",
            str(rm_preferences),
            "--out",
            str(dpo),
            "--reference",
            reference.target,
            "--lr",
            "3e-5",
            "--beta",
            "0.5",
            "--device",
            "cpu",
            "--seed",
            str(seed),
        ).stdout
    assert "held-out preference accuracy" in out and f"wrote {dpo}" in out
    held_out = [json.loads(line)["prompt"] for line in (synth_dir / "prompts_eval.jsonl").read_text().splitlines()]
    before, after = mean_ground_truth(sft, held_out), mean_ground_truth(dpo, held_out)
    print(f"ground truth {before:.3f} -> {after:.3f}")
    record_figures({"ground_truth_gain": after - before}, {"ground_truth_gain": DPO_TRUTH_GAIN})
    assert after - before > DPO_TRUTH_GAIN
    # a standard model dir: `rlhf serve policy` loads it as it is
    with CliServer(["serve", "policy", "--model", str(dpo), "--device", "cpu"], log_path=tmp_path / "policy.log") as p:
        from rlhf.policy.client import PolicyClient

        with PolicyClient(p.target) as client:
            samples = client.generate(["Human: Tell me about cats.\nAssistant:"], GenerationParams(max_new_tokens=4))
        assert len(samples) == 1

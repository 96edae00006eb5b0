"""LoRA in `rlhf train sft` and `rlhf train rm`, through the CLI: the adapter and the merged dir load as they are
(AutoModel, peft.PeftModel, `rlhf serve policy`), agree with each other, and the reward model's mean-0
normalization holds for both; a LoRA reward model reaches full training's accuracy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rlhf.core.reward_model import RewardScorer
from rlhf.core.types import GenerationParams
from rlhf.policy.client import PolicyClient
from rlhf.training.preferences import completions, load_rankings, split_rankings
from tests.helpers import Service, rlhf

pytestmark = pytest.mark.slow

# LoRA (r 8) and full training of the reward model from the same SFT model, same data and seed: on the
# synthetic task held-out accuracy was 0.717 vs 0.720 (seed 0); it must stay within this of full training.
ACCURACY_GAP = 0.04
IDS = torch.tensor([[5, 9, 13, 2, 7, 11, 40, 41]])


def both(adapter: Path) -> dict[str, Path]:
    """A LoRA output: its adapter dir, and the merged model in it."""
    return {"adapter": adapter, "merged": adapter / "merged"}


@pytest.fixture(scope="module")
def stages(lora_sft_model, reward_model, lora_reward_model, rm_preferences, trained_models, seed):
    """The session's LoRA SFT, reward and LoRA reward models (tests/conftest.py; the reward models from its SFT
    model), and a LoRA reward model on the LoRA SFT model: an adapter whose base is an adapter."""
    chain = trained_models.train(
        "rm",
        lora_sft_model.dir,
        rm_preferences,
        *("--epochs", "1", "--batch-size", "64", "--max-length", "48", "--device", "cpu", "--lora-r", "4"),
        *("--seed", str(seed)),
    )
    dirs = {"sft-lora": lora_sft_model.dir, "rm-lora": lora_reward_model.dir, "rm-chain": chain.dir}
    accuracy = {
        name: float(re.search(r"held-out pairwise accuracy: ([0-9.]+)", trained.stdout).group(1))
        for name, trained in (("rm", reward_model), ("rm-lora", lora_reward_model))
    }
    return dirs, rm_preferences, accuracy


def test_lora_sft_writes_an_adapter_and_a_merged_dir_that_agree(stages, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = stages[0]["sft-lora"]
    merged = adapter / "merged"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            plain(input_ids=IDS).logits, with_adapter(input_ids=IDS).logits, rtol=1e-4, atol=1e-4
        )
        assert not torch.allclose(plain(input_ids=IDS).logits, base(input_ids=IDS).logits)  # it did train


def test_the_policy_service_serves_the_adapter_dir_as_it_serves_the_merged_dir(stages):
    adapter = stages[0]["sft-lora"]
    greedy = GenerationParams(max_new_tokens=8, temperature=0)
    samples = {}
    for name, model in (("sft-lora", adapter), ("sft-lora/merged", adapter / "merged")):
        with (
            Service(["serve", "policy", "--model", str(model), "--device", "cpu"], name=name) as proc,
            PolicyClient(proc.target) as policy,
        ):
            samples[name] = [
                s.response_token_ids for s in policy.generate(["Human: Describe cats.\nAssistant:"] * 2, greedy)
            ]
    assert samples["sft-lora"] == samples["sft-lora/merged"]


def test_no_merge_writes_the_adapter_only(tiny_model_dir, synth_dir, tmp_path):
    rlhf(
        "train",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(synth_dir / "sft.jsonl"),
        "--out",
        str(tmp_path / "a"),
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--lora-r",
        "4",
        "--no-merge",
    )
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file() and not (tmp_path / "a" / "merged").exists()


def test_a_lora_reward_model_matches_full_training_and_both_outputs_score_mean_0(stages, seed):
    dirs, preferences, accuracy = stages
    assert accuracy["rm-lora"] >= accuracy["rm"] - ACCURACY_GAP, accuracy
    items = completions(load_rankings(preferences))[:300]
    adapter = dirs["rm-lora"]
    scores = {name: RewardScorer.load(model, device="cpu").score(items) for name, model in both(adapter).items()}
    torch.testing.assert_close(torch.tensor(scores["adapter"]), torch.tensor(scores["merged"]), rtol=1e-4, atol=1e-4)
    train, _ = split_rankings(load_rankings(preferences), 0.1, seed)  # the split `train rm` made (its default 0.1)
    reference = completions(train)
    for name, model in both(adapter).items():  # the adapter carries the offset (in its final-norm copy)
        mean = sum(RewardScorer.load(model, device="cpu").score(reference)) / len(reference)
        assert abs(mean) < 1e-4, (name, mean)


def test_an_adapter_on_an_adapter_loads_as_its_merged_dir(stages, synth_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.core.modeling import load_causal_lm

    dirs, preferences, _ = stages
    config = json.loads((dirs["rm-chain"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(dirs["sft-lora"].resolve())
    items = completions(load_rankings(preferences))[:100]
    chained, merged = (RewardScorer.load(model, device="cpu").score(items) for model in both(dirs["rm-chain"]).values())
    torch.testing.assert_close(torch.tensor(chained), torch.tensor(merged), rtol=1e-4, atol=1e-4)
    rlhf(
        "train",
        "sft",
        "--model",
        str(dirs["sft-lora"]),
        "--data",
        str(synth_dir / "sft.jsonl"),
        "--out",
        str(tmp_path / "sft-chain"),
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--lora-r",
        "4",
        "--lr",
        "1e-2",
    )
    with torch.no_grad():
        got = load_causal_lm(tmp_path / "sft-chain", torch.device("cpu"), torch.float32)(input_ids=IDS).logits
        want = AutoModelForCausalLM.from_pretrained(tmp_path / "sft-chain" / "merged")(input_ids=IDS).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_lora_reward_model_on_an_rmsnorm_model_carries_its_offset_in_the_adapter_dir(stages, tmp_path):
    """Llama's last norm (RMSNorm) has no bias: the mean-0 offset lives in config, which an adapter dir has none
    of; it travels in the adapter's overrides file, so the adapter dir scores like the merged dir, at mean 0."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf.core.modeling import CONFIG_OVERRIDES
    from rlhf.toy.tiny import train_tokenizer

    _, preferences, _ = stages
    tokenizer = train_tokenizer(1024)
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    ).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    out = rlhf(
        "train",
        "rm",
        "--model",
        str(tmp_path / "llama"),
        "--data",
        str(preferences),
        "--out",
        str(tmp_path / "rm"),
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--max-length",
        "48",
        "--device",
        "cpu",
        "--lora-r",
        "4",
    ).stdout
    assert "folded into config.json reward_offset" in out
    assert "reward_offset" in json.loads((tmp_path / "rm" / CONFIG_OVERRIDES).read_text())
    train, _ = split_rankings(load_rankings(preferences), 0.1, 0)
    reference = completions(train)
    scores = {name: RewardScorer.load(tmp_path / name, device="cpu").score(reference) for name in ("rm", "rm/merged")}
    torch.testing.assert_close(torch.tensor(scores["rm"]), torch.tensor(scores["rm/merged"]), rtol=1e-4, atol=1e-4)
    assert abs(sum(scores["rm"]) / len(reference)) < 1e-3


# LoRA SFT against full SFT from a base pretrained on the task's text (synthetic.base_text): the held-out
# response loss of LoRA (r 8, lr 1e-2) over full's (lr 3e-3) was -1.7% to +2.5% over seeds 0-4
# (benchmarks/seed_sweep.py --only lora-sft), within the seeds' own spread. From the random tiny model LoRA
# cannot get there: the demonstrations' " are" never comes out of it, and only the frozen tied output
# embedding could learn it.
LORA_SFT_GAP = 0.05


def test_lora_sft_from_a_pretrained_base_reaches_full_sfts_held_out_loss(
    tiny_model_dir, synth_dir, tmp_path, seed, record_figures
):
    from rlhf.toy.synthetic import write_base_text

    world = write_base_text(tmp_path / "base-text.jsonl", seed)
    common = ["--batch-size", "32", "--seed", str(seed), "--device", "cpu"]
    rlhf(
        "train",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(world),
        "--out",
        str(tmp_path / "base"),
        "--lr",
        "3e-3",
        "--epochs",
        "2",
        *common,
    )
    losses = {}
    for name, extra in (("full", ["--lr", "3e-3"]), ("lora", ["--lora-r", "8", "--lr", "1e-2"])):
        out = rlhf(
            "train",
            "sft",
            "--model",
            str(tmp_path / "base"),
            "--data",
            str(synth_dir / "sft.jsonl"),
            "--out",
            str(tmp_path / name),
            *common,
            *extra,
        ).stdout
        losses[name] = float(re.search(r"eval loss .*-> ([0-9.]+)", out).group(1))
    gap = losses["lora"] / losses["full"] - 1
    print(
        f"held-out SFT loss from a pretrained base: full {losses['full']:.4f}, LoRA r8 {losses['lora']:.4f} "
        f"({gap:+.2%})"
    )
    record_figures({"lora_sft_loss_gap_max": gap}, {"lora_sft_loss_gap_max": LORA_SFT_GAP})
    assert gap < LORA_SFT_GAP

"""The embedded tiny model and the synthetic task."""

import json
import random

from rlhf.toy.synthetic import ground_truth_score, noisy_ranking, write_task


def test_tiny_model_is_small_and_tokenizes_any_utf8(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    text = "naïve café ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00 日本語 🙂"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_ground_truth_rule_by_hand():
    prompt = "Human: Describe cats.\nAssistant:"
    assert ground_truth_score(prompt, " cats are kind and warm.") == 1 + 0.5 * 2
    assert ground_truth_score(prompt, " dogs are kind and rude.") == 0.0
    assert ground_truth_score(prompt, " cats are dull, sad, ugly and cold.") == 1 - 0.5 * 3  # capped at 3


def test_noisy_labels_mostly_follow_the_rule():
    rng = random.Random(0)
    prompt = "Human: Describe cats.\nAssistant:"
    good, bad = " cats are kind.", " cats are dull."  # ground truth 1.5 vs 0.5
    agree = sum(noisy_ranking(rng, prompt, [bad, good])[0] == 1 for _ in range(2000))
    assert 0.9 < agree / 2000 < 1.0  # noisy like human labellers, but right far more often than not


def test_write_task_files(tmp_path):
    paths = write_task(tmp_path, seed=1, scale=0.05)
    rows = [json.loads(line) for line in paths["preferences"].read_text().splitlines()]
    assert any("chosen" in r for r in rows) and any("ranking" in r for r in rows)
    for r in rows:
        if "ranking" in r:
            assert sorted(r["ranking"]) == list(range(len(r["responses"])))
    assert write_task(tmp_path / "again", seed=1, scale=0.05)["sft"].read_text() == paths["sft"].read_text()

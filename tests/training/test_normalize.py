"""Folding the mean reward into a bias: GPT-2's ln_f, a head with a bias, and the config fallback."""

import pytest
import torch

from rlhf.core.logprobs import pad_right
from rlhf.core.modeling import load_tokenizer
from rlhf.core.reward_model import OFFSET_KEY, RewardScorer, load_sequence_classifier, reward_forward
from rlhf.training.normalize import fold_offset

ITEMS = [
    ("Human: Describe cats.\nAssistant:", " cats are kind."),
    ("Human: Describe dogs.\nAssistant:", " rude."),
    ("Human: Tell me about stars.\nAssistant:", " stars are bright, warm and gentle."),
]


def _batch(tokenizer):
    ids = [tokenizer(p)["input_ids"] + tokenizer(r)["input_ids"] + [tokenizer.eos_token_id] for p, r in ITEMS]
    return pad_right(ids, tokenizer.pad_token_id)


def _rewards(model, ids, attention):
    with torch.no_grad():
        return reward_forward(model.eval(), ids, attention)


def test_gpt2_folds_into_ln_f_and_from_pretrained_keeps_it(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_sequence_classifier(tiny_model_dir, tokenizer, torch.device("cpu"), torch.float32).eval()
    ids, attention = _batch(tokenizer)
    before = _rewards(model, ids, attention)
    assert fold_offset(model, 0.75, ids, attention) == "transformer.ln_f.bias"
    assert _rewards(model, ids, attention) == pytest.approx((before - 0.75).tolist(), abs=1e-5)
    model.save_pretrained(tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    assert not hasattr(reloaded.config, OFFSET_KEY)
    assert _rewards(reloaded, ids, attention) == pytest.approx((before - 0.75).tolist(), abs=1e-5)


def test_a_head_with_a_bias_takes_the_offset_there(tiny_model_dir):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_sequence_classifier(tiny_model_dir, tokenizer, torch.device("cpu"), torch.float32).eval()
    model.score = torch.nn.Linear(model.config.n_embd, 1, bias=True)
    ids, attention = _batch(tokenizer)
    before, bias = _rewards(model, ids, attention), model.score.bias.item()
    assert fold_offset(model, -0.5, ids, attention) == "score head bias"
    assert model.score.bias.item() == pytest.approx(bias + 0.5)
    assert _rewards(model, ids, attention) == pytest.approx((before + 0.5).tolist(), abs=1e-6)


def test_rmsnorm_models_keep_the_offset_in_their_config(tiny_model_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForSequenceClassification(config).eval()
    ids, attention = _batch(tokenizer)
    before = _rewards(model, ids, attention)
    assert fold_offset(model, 0.25, ids, attention) == f"config.json {OFFSET_KEY}"
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    scorer = RewardScorer.load(tmp_path / "rm", device="cpu")  # what the service and LocalReward use
    assert scorer.model.config.reward_offset == pytest.approx(-0.25)
    assert _rewards(scorer.model, ids, attention) == pytest.approx((before - 0.25).tolist(), abs=1e-5)

"""Several reward services in one run: --reward A,B --reward-weights WA,WB sums the weighted scores."""

from __future__ import annotations

import json

import pytest

from rlhf.core.errors import UserError
from rlhf.learner.config import validate
from rlhf.learner.loop import train
from rlhf.learner.replicas import Services
from rlhf.policy.local import LocalPolicy
from rlhf.reference.local import LocalReference
from rlhf.toy.synthetic import ground_truth_score
from tests.learner.inprocess import CallableReward
from tests.learner.test_learner_loop import make_config


def length(prompt: str, response: str) -> float:
    return float(len(response))


def test_weighted_rewards_are_summed_and_each_is_logged(tiny_model_dir, synth_dir, tmp_path):
    services = Services(
        [LocalPolicy(tiny_model_dir, device="cpu")],
        [CallableReward(ground_truth_score), CallableReward(length)],
        LocalReference(tiny_model_dir, device="cpu"),
        timeout=5.0,
        reward_weights=[2.0, -0.5],
    )
    train(make_config(tiny_model_dir, synth_dir, tmp_path / "run", steps=1, ptx_data=None), services)
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    for row in rows:
        expected = 2.0 * ground_truth_score(row["prompt"], row["response"]) - 0.5 * len(row["response"])
        assert row["score"] == pytest.approx(expected, abs=1e-5)
    (metrics,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    truth = sum(ground_truth_score(r["prompt"], r["response"]) for r in rows) / len(rows)
    assert metrics["objective/reward/0"] == pytest.approx(truth, abs=1e-5)
    assert metrics["objective/reward/1"] == pytest.approx(sum(len(r["response"]) for r in rows) / len(rows), abs=1e-4)
    assert metrics["objective/reward"] == pytest.approx(2.0 * truth - 0.5 * metrics["objective/reward/1"], abs=1e-4)


def test_reward_weights_must_match_the_services(tiny_model_dir, synth_dir, tmp_path):
    config = make_config(tiny_model_dir, synth_dir, tmp_path, reward="a:1,b:2", reward_weights="1.0")
    with pytest.raises(UserError, match="1 weights for 2 --reward services"):
        validate(config)
    with pytest.raises(UserError, match="expected numbers"):
        validate(make_config(tiny_model_dir, synth_dir, tmp_path, reward="a:1", reward_weights="heavy"))
    assert validate(
        make_config(tiny_model_dir, synth_dir, tmp_path, reward="a:1,b:2", reward_weights="1,0.5")
    ).reward_weight_values == [1.0, 0.5]

"""The loop with the critic-free estimators (GRPO, RLOO, REINFORCE++), on in-process services and the tiny model."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rlhf.core.errors import UserError
from rlhf.learner.checkpoints import saved_tensors
from rlhf.learner.config import validate
from rlhf.learner.loop import train
from rlhf.learner.replicas import Services
from rlhf.policy.local import LocalPolicy
from rlhf.reference.local import LocalReference
from rlhf.toy.synthetic import ground_truth_score
from tests.learner.inprocess import CallableReward
from tests.learner.test_learner_loop import make_config


class RecordingReplica(LocalPolicy):
    """A LocalPolicy that remembers the prompts and n of every Generate call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params.n))
        return super().generate(prompts, params)


@pytest.fixture
def replicas(tiny_model_dir):
    return [RecordingReplica(tiny_model_dir, device="cpu"), RecordingReplica(tiny_model_dir, device="cpu")]


@pytest.fixture
def services(replicas, tiny_model_dir):
    return Services(
        replicas, CallableReward(ground_truth_score), LocalReference(tiny_model_dir, device="cpu"), timeout=5.0
    )


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def critic_free(tiny_model_dir, synth_dir, out, estimator="grpo", **overrides):
    settings = dict(
        advantage_estimator=estimator,
        samples_per_prompt=4,
        batch_size=4,
        num_minibatches=2,
        steps=2,
        ptx_data=None,
        anneal_lr=False,
    )
    return make_config(tiny_model_dir, synth_dir, out, **{**settings, **overrides})


def test_grpo_samples_groups_on_one_replica_and_builds_no_value_model(
    tiny_model_dir, synth_dir, tmp_path, services, replicas
):
    out = tmp_path / "grpo"
    state = train(critic_free(tiny_model_dir, synth_dir, out), services)
    assert state.value is None
    saved = saved_tensors(out / "checkpoints" / "step-000002")
    assert saved and all(name.startswith("policy.") for name in saved)  # no critic in the checkpoint

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all("loss/value" not in m and "val/explained_variance" not in m for m in metrics)
    assert all(m["rollout/group_reward_std"] >= 0 for m in metrics)
    rollouts = read_jsonl(out / "rollouts.jsonl")
    assert len(rollouts) == 2 * 4 * 4  # steps x prompts x samples per prompt
    for step in (1, 2):
        groups = Counter((r["group"], r["prompt"]) for r in rollouts if r["step"] == step)
        assert sorted(groups.values()) == [4, 4, 4, 4] and len({g for g, _ in groups}) == 4
    # Each replica got whole prompts with n = 4: a group never spans two replicas.
    assert [len(replica.calls) for replica in replicas] == [2, 2]  # one Generate per step each
    for step in range(2):
        shares = [replica.calls[step] for replica in replicas]
        assert [(len(prompts), n) for prompts, n in shares] == [(2, 4), (2, 4)]
        assert not set(shares[0][0]) & set(shares[1][0])


def test_same_seed_same_groups_and_resume_needs_the_same_kind_of_estimator(
    tiny_model_dir, synth_dir, tmp_path, services
):
    first, second = tmp_path / "a", tmp_path / "b"
    train(critic_free(tiny_model_dir, synth_dir, first, "rloo"), services)
    train(critic_free(tiny_model_dir, synth_dir, second, "rloo", steps=1), services)
    train(critic_free(tiny_model_dir, synth_dir, second, "rloo", resume=True), services)
    a, b = read_jsonl(first / "rollouts.jsonl"), read_jsonl(second / "rollouts.jsonl")
    assert [(r["prompt"], r["response"]) for r in a] == [(r["prompt"], r["response"]) for r in b]
    resumed, straight = read_jsonl(second / "metrics.jsonl")[1], read_jsonl(first / "metrics.jsonl")[1]
    for key in ("objective/reward", "loss/policy"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-7), key
    with pytest.raises(UserError, match="critic-free"):
        train(make_config(tiny_model_dir, synth_dir, second, steps=3, resume=True), services)


@pytest.mark.parametrize("estimator", ["rloo", "reinforce++", "reinforce++-baseline"])
def test_every_estimator_runs_a_step_with_the_kl_in_the_loss(tiny_model_dir, synth_dir, tmp_path, services, estimator):
    config = critic_free(
        tiny_model_dir,
        synth_dir,
        tmp_path / "run",
        estimator,
        steps=1,
        kl_in="loss",
        kl_estimator="k3",
        loss_aggregation="seq-mean-token-mean",
        lr=1e-3,
        ptx_data=str(synth_dir / "pretrain.jsonl"),
    )
    train(config, services)
    (m,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert m["loss/kl"] >= 0 and "loss/ptx" in m and "loss/value" not in m


def test_group_estimators_need_two_samples_per_prompt(tiny_model_dir, synth_dir, tmp_path):
    for estimator in ("grpo", "rloo", "reinforce++-baseline"):
        with pytest.raises(UserError, match="--samples-per-prompt 2 or more"):
            validate(critic_free(tiny_model_dir, synth_dir, tmp_path, estimator, samples_per_prompt=1))
    validate(critic_free(tiny_model_dir, synth_dir, tmp_path, "reinforce++", samples_per_prompt=1))
    with pytest.raises(UserError, match="--kl-in loss needs --kl-estimator k3"):
        validate(critic_free(tiny_model_dir, synth_dir, tmp_path, kl_in="loss"))
    with pytest.raises(UserError, match="--num-minibatches"):
        validate(
            critic_free(tiny_model_dir, synth_dir, tmp_path, samples_per_prompt=2, batch_size=1, num_minibatches=4)
        )

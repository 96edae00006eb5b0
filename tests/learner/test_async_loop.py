"""--rollout-ahead through the loop, on in-process services and the tiny model: every estimator trains on
samples at most --max-staleness versions old, reports the flow, and a killed run resumes with every prompt trained
on exactly once per epoch."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from rlhf.core.errors import UserError
from rlhf.core.server import ServerOptions, ServerThread
from rlhf.learner.client import LearnerClient
from rlhf.learner.config import validate
from rlhf.learner.control import LearnerControl
from rlhf.learner.loop import train
from rlhf.learner.replicas import Services
from rlhf.learner.service import LearnerService
from rlhf.policy.local import LocalPolicy
from rlhf.reference.local import LocalReference
from rlhf.toy.synthetic import ground_truth_score
from tests.learner.inprocess import CallableReward
from tests.learner.test_learner_loop import make_config

FLOW = ["rollout/staleness_mean", "rollout/staleness_max", "rollout/dropped_stale", "time/learner_idle"]


@pytest.fixture
def services(tiny_model_dir):
    replicas = [LocalPolicy(tiny_model_dir, device="cpu"), LocalPolicy(tiny_model_dir, device="cpu")]
    return Services(
        replicas, CallableReward(ground_truth_score), LocalReference(tiny_model_dir, device="cpu"), timeout=5.0
    )


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def ahead(tiny_model_dir, synth_dir, out, estimator="grpo", **overrides):
    group = 1 if estimator in ("gae", "reinforce++") else 2
    settings = dict(
        advantage_estimator=estimator,
        samples_per_prompt=group,
        batch_size=4,
        num_minibatches=1,
        steps=4,
        ptx_data=None,
        rollout_ahead=1,
        save_every=2,
    )
    return make_config(tiny_model_dir, synth_dir, out, **{**settings, **overrides})


@pytest.mark.parametrize("estimator", ["gae", "grpo", "rloo", "reinforce++"])
def test_every_estimator_trains_ahead_on_samples_at_most_max_staleness_old(
    estimator, tiny_model_dir, synth_dir, tmp_path, services
):
    out = tmp_path / estimator
    train(ahead(tiny_model_dir, synth_dir, out, estimator), services)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert all(key in m for key in [*FLOW, "time/services_idle"]), sorted(m)
        assert m["rollout/staleness_max"] <= 1 and m["rollout/dropped_stale"] == 0
    # the rollout's step is the one logged after its update: trained at step - 1, drawn at most one version before
    for row in read_jsonl(out / "rollouts.jsonl"):
        assert row["step"] - 2 <= row["weights_version"] <= row["step"] - 1
    assert max(m["rollout/staleness_max"] for m in metrics) == 1  # the overlap did happen
    assert services.policies[0].model_info().weights_version == 4  # the final push landed


def test_lora_bf16_and_ppo_ptx_train_ahead(tiny_model_dir, synth_dir, tmp_path, services):
    out = tmp_path / "lora"
    lora = dict(lora_r=8, lora_alpha=16, precision="bf16-mixed", gradient_checkpointing=True)
    config = ahead(tiny_model_dir, synth_dir, out, "gae", steps=3, ptx_data=str(synth_dir / "pretrain.jsonl"), **lora)
    train(config, services)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all("loss/ptx" in m and m["rollout/staleness_max"] <= 1 for m in metrics)
    assert services.policies[1].model_info().weights_version == 3  # the adapters reached every replica
    assert (out / "policy" / "adapter_config.json").exists()


def test_lockstep_reports_the_flow_with_staleness_zero(tiny_model_dir, synth_dir, tmp_path, services):
    out = tmp_path / "lockstep"
    train(ahead(tiny_model_dir, synth_dir, out, rollout_ahead=0, steps=2), services)
    for m in read_jsonl(out / "metrics.jsonl"):
        assert m["rollout/staleness_max"] == 0 and m["time/learner_idle"] > 0 and m["time/services_idle"] > 0


def test_a_run_killed_with_batches_in_flight_trains_every_prompt_once_per_epoch(
    tiny_model_dir, synth_dir, tmp_path, services
):
    # 16 prompts, 4 per step: an epoch is 4 steps. The run trains 5 steps with 2 more batches in flight ahead; as
    # if SIGKILL struck after step 5's update, before its checkpoint: step 5 and the in-flight batches of steps 6
    # and 7 are collected again from step 4's checkpoint.
    prompts = [json.loads(line)["prompt"] for line in (synth_dir / "prompts.jsonl").read_text().splitlines()][:16]
    few = tmp_path / "prompts.jsonl"
    few.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "run"

    def run(steps: int, **flags):
        config = ahead(tiny_model_dir, synth_dir, out, rollout_ahead=2, steps=steps, save_every=2, **flags)
        config.prompts = str(few)
        return train(config, services)

    run(5)
    shutil.rmtree(out / "checkpoints" / "step-000005")
    (out / "checkpoints" / "latest").write_text("step-000004")
    run(8, resume=True)
    rows = read_jsonl(out / "rollouts.jsonl")
    assert sorted({r["step"] for r in rows}) == list(range(1, 9))  # none twice, none missing
    for epoch in (range(1, 5), range(5, 9)):
        trained = Counter(r["prompt"] for r in rows if r["step"] in epoch)
        assert trained == dict.fromkeys(prompts, 2), epoch  # every prompt once (its 2 samples), none twice


def test_max_staleness_below_rollout_ahead_is_refused(tiny_model_dir, synth_dir, tmp_path):
    config = ahead(tiny_model_dir, synth_dir, tmp_path / "x", rollout_ahead=2, max_staleness=1)
    config.policy, config.reward, config.reference = "a:1", "b:1", "c:1"
    with pytest.raises(UserError, match="--max-staleness 1 is below --rollout-ahead 2"):
        validate(config)
    config.max_staleness = None  # the default: --rollout-ahead
    assert validate(config).staleness_limit == 2


def test_learner_status_lists_the_batches_in_flight():
    control = LearnerControl(10, "out")
    control.in_flight = lambda: [(4, "ready", 8), (5, "collecting", 8)]  # what a Producer reports
    with (
        ServerThread(LearnerService(control), ServerOptions(port=0)) as port,
        LearnerClient(f"127.0.0.1:{port}", timeout=30) as client,
    ):
        status = client.status()
    assert [(b.step, b.state, b.prompts) for b in status.in_flight] == [(4, "ready", 8), (5, "collecting", 8)]

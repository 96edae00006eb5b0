"""--rollout-ahead end to end: `rlhf serve policy|reward|reference` and `rlhf train ppo` as separate processes.
GRPO and PPO one step ahead still learn the synthetic task within the KL bound; a replica killed mid-run costs
time, not samples, and nothing older than --max-staleness is trained on; SIGTERM and SIGKILL with two batches in
flight lose no prompt and repeat none."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from contextlib import ExitStack

import pytest

from rlhf.policy.client import PolicyClient
from rlhf.reward.client import RewardClient
from tests.helpers import hang_guard
from tests.learner.test_critic_free_acceptance import KL_IN_LOSS, RECIPE, held_out_prompts
from tests.learner.test_distributed_learner import SHORT, TWO_RANKS
from tests.learner.test_learner_acceptance import LEARNER_HANG_GUARD_S, Run, evaluate, read_jsonl

pytestmark = pytest.mark.slow

# The lockstep acceptance runs' bounds (test_learner_acceptance.py, test_critic_free_acceptance.py): one step of
# staleness, corrected by the decoupled objective, must not cost the learning they hold.
TRUTH_GAIN, KL_BOUND = 0.2, 15.0
PPO = ["--lr", "3e-4", "--early-stop-kl", "0.05", "--kl-coef", "0.3", "--min-new-tokens", "4", "--max-new-tokens", "12"]
GRPO = ["--advantage-estimator", "grpo", "--samples-per-prompt", "8", *RECIPE, *KL_IN_LOSS]


@pytest.mark.parametrize(("name", "flags", "batch"), [("ppo", PPO, 32), ("grpo", GRPO, 4)])
def test_one_step_ahead_raises_the_ground_truth_within_the_kl_bound(
    trained, synth_dir, tmp_path, seed, record_figures, name, flags, batch
):
    held_out = held_out_prompts(synth_dir)
    with ExitStack() as stack:
        run = Run(stack, trained, tmp_path / name, replicas=2)
        policy = stack.enter_context(PolicyClient(run.policies[0].target))
        reward = stack.enter_context(RewardClient(run.reward.target))
        before = evaluate(policy, reward, held_out)
        run.start_learner(
            *flags, "--steps", "30", "--batch-size", str(batch), "--seed", str(seed), "--rollout-ahead", "1"
        )
        run.wait_learner()
        after = evaluate(policy, reward, held_out)  # the final weights reached the replica
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert max(m["rollout/staleness_max"] for m in metrics) == 1  # it did run ahead
    figures = {
        f"ahead_{name}_ground_truth_gain": after[1] - before[1],
        f"ahead_{name}_kl_per_step_max": max(m["objective/kl"] for m in metrics),
    }
    record_figures(figures, {f"ahead_{name}_ground_truth_gain": TRUTH_GAIN, f"ahead_{name}_kl_per_step_max": KL_BOUND})
    assert figures[f"ahead_{name}_ground_truth_gain"] > TRUTH_GAIN
    assert figures[f"ahead_{name}_kl_per_step_max"] < KL_BOUND


def test_a_replica_killed_while_generating_ahead_costs_time_not_samples(untrained, tmp_path):
    steps = 12
    with ExitStack() as stack:
        run = Run(stack, untrained, tmp_path / "ppo", replicas=2)
        run.start_learner(
            *("--steps", str(steps), "--batch-size", "8", "--max-new-tokens", "8", "--ppo-epochs", "1"),
            *("--save-every", "100", "--rollout-ahead", "1"),
        )
        run.wait_for_step(3)
        replica = run.policies[1]
        replica.kill()  # mid-batch: its share waits for its return, then pulls the current weights
        time.sleep(1.0)
        replica.start()
        run.wait_learner()
        with PolicyClient(replica.target) as client:
            final_version = client.model_info().weights_version
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))  # every step ran
    assert all(m["rollout/staleness_max"] <= 1 for m in metrics)  # --max-staleness, by default --rollout-ahead
    rows = read_jsonl(run.out / "rollouts.jsonl")
    assert len(rows) == steps * 8
    assert all(r["weights_version"] >= r["step"] - 2 for r in rows)  # trained at step - 1, at most 1 behind
    assert final_version == steps


def test_sigterm_and_sigkill_with_two_batches_ahead_train_every_prompt_once_per_epoch(untrained, tmp_path):
    # 16 prompts, 4 per step: an epoch is 4 steps; 12 steps are 3 epochs.
    prompts = [json.loads(line)["prompt"] for line in untrained.prompts.read_text().splitlines()][:16]
    few = tmp_path / "prompts.jsonl"
    few.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    untrained.prompts = few
    steps, save_every = 12, 3
    flags = [
        *("--batch-size", "4", "--max-new-tokens", "6", "--ppo-epochs", "1", "--steps", str(steps)),
        *("--save-every", str(save_every), "--rollout-ahead", "2"),
    ]
    with ExitStack() as stack:
        run = Run(stack, untrained, tmp_path / "ppo")
        latest = run.out / "checkpoints" / "latest"

        # SIGTERM: the update under way finishes, one checkpoint at its step, exit 0
        run.start_learner(*flags)
        run.wait_for_step(2)
        run.learner.send_signal(signal.SIGTERM)
        assert run.learner.wait(hang_guard(LEARNER_HANG_GUARD_S)) == 0, (run.logs / "learner.log").read_text()[-4000:]
        terminated_at = max(m["step"] for m in run.metrics())
        assert terminated_at < steps and latest.read_text() == f"step-{terminated_at:06d}"

        # SIGKILL with two batches in flight: the steps since the last checkpoint are redone, the batches
        # in flight collected again
        run.start_learner(*flags, "--resume")
        kill_after = terminated_at + 2
        kill_after += kill_after % save_every == 0  # not a save step, so the kill loses some steps
        run.wait_for_step(kill_after)
        run.learner.send_signal(signal.SIGKILL)
        run.learner.wait()
        saved = int(latest.read_text().removeprefix("step-"))
        assert terminated_at <= saved <= max(m["step"] for m in run.metrics()) < steps

        run.start_learner(*flags, "--resume")
        run.wait_learner()

    assert [m["step"] for m in run.metrics()] == list(range(1, steps + 1))  # none twice, none missing
    rows = read_jsonl(run.out / "rollouts.jsonl")
    for first in range(1, steps + 1, 4):
        epoch = Counter(r["prompt"] for r in rows if first <= r["step"] < first + 4)
        assert epoch == dict.fromkeys(prompts, 1), first  # every prompt of the epoch once


def test_two_ranks_each_keep_their_share_of_the_batches_in_flight(untrained, tmp_path):
    with ExitStack() as stack:
        run = Run(stack, untrained, tmp_path / "two", replicas=2)  # one replica per rank
        run.start_learner("--steps", "4", "--save-every", "2", *SHORT, *TWO_RANKS, "--rollout-ahead", "1")
        run.wait_learner()
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["rollout/staleness_max"] <= 1 for m in metrics)
    rows = read_jsonl(run.out / "rollouts.jsonl")
    assert len(rows) == 4 * 8 and all(r["weights_version"] >= r["step"] - 2 for r in rows)
    assert (run.out / "policy" / "config.json").exists()

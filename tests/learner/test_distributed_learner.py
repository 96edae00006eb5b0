"""The distributed learner: `rlhf train ppo --nproc-per-node 2` (torchrun, gloo, FSDP2) through the services.

Every run here talks to real servers as separate processes; two ranks share this machine's two cores with
them, so these runs check the math and the faults, not speed (benchmarks/bench_distributed.py measures).
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import ExitStack

import pytest

from rlhf.core.launch import children_of
from rlhf.learner.checkpoints import saved_tensors
from tests.helpers import hang_guard
from tests.learner.test_learner_acceptance import LEARNER_HANG_GUARD_S, Run, evaluate, read_jsonl

pytestmark = pytest.mark.slow

# --dist-timeout is a hang guard: how long a rank waits in a collective for the other, which may be busy.
DIST_TIMEOUT = f"{hang_guard(600):.0f}"
TWO_RANKS = ["--nproc-per-node", "2", "--dist-timeout", DIST_TIMEOUT]
SHORT = [
    "--batch-size",
    "8",
    "--max-new-tokens",
    "8",
    "--ppo-epochs",
    "2",
    "--num-minibatches",
    "2",
    "--lr",
    "1e-4",
    "--seed",
    "0",
    "--no-anneal-lr",
]
# One update over two ranks is the one-process update up to float summation order (gloo sums the gradient
# shards): the first 3 steps' losses, KL and approx KL agreed within 1e-7 here (AVX-512); the bound leaves 100x.
# (Clip fractions are counts of values past a threshold: one value moving by 1e-7 can flip one.)
LOSS_TOLERANCE = 1e-5
COMPARED = ("loss/policy", "loss/value", "objective/reward", "objective/kl", "objective/entropy", "policy/approxkl")


def ranks_of(launcher) -> list[int]:
    """The rank processes under `rlhf train ppo --nproc-per-node N`: torchrun's children."""
    torchruns = children_of(launcher.pid)
    return [pid for torchrun in torchruns for pid in children_of(torchrun)]


def test_two_ranks_take_the_one_process_steps_and_a_one_rank_checkpoint_resumes_on_two(untrained, tmp_path):
    steps = ["--steps", "3", "--save-every", "3", *SHORT]
    with ExitStack() as stack:  # one set of services: the untrained reward head is random per process
        run = Run(stack, untrained, tmp_path / "one", replicas=2)
        run.start_learner(*steps)
        run.wait_learner()
        run.out = tmp_path / "two"  # each run pushes its version 0 to the replicas first
        run.start_learner(*steps, *TWO_RANKS)
        run.wait_learner()
        # the 1-process checkpoint (step 3) goes on at 2 ranks: DCP reshards it
        run.out = resumed_out = tmp_path / "one"
        run.start_learner("--steps", "5", "--save-every", "3", *SHORT, *TWO_RANKS, "--resume")
        run.wait_learner()

    one_metrics = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    two_metrics = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [m["step"] for m in two_metrics] == [1, 2, 3]
    for a, b in zip(one_metrics[:3], two_metrics, strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], abs=LOSS_TOLERANCE, rel=LOSS_TOLERANCE), (a["step"], key)
    # the same samples: share seeds count over the whole world
    one_rollouts = read_jsonl(tmp_path / "one" / "rollouts.jsonl")[: 3 * 8]
    two_rollouts = read_jsonl(tmp_path / "two" / "rollouts.jsonl")
    assert [r["response"] for r in one_rollouts] == [r["response"] for r in two_rollouts]
    assert [m["step"] for m in read_jsonl(resumed_out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert (tmp_path / "two" / "policy" / "config.json").exists()
    assert any(name.startswith("value.") for name in saved_tensors(tmp_path / "two" / "checkpoints" / "step-000003"))


DEAD_RANK_BOUND_S = 30  # a rank SIGKILLed: torchrun stops the others (--shutdown-timeout 10) and exits non-zero


def test_sigterm_checkpoints_once_a_dead_rank_stops_all_and_one_rank_resumes_two(untrained, tmp_path):
    steps = 14
    flags = ["--steps", str(steps), "--save-every", "3", *SHORT]
    with ExitStack() as stack:
        run = Run(stack, untrained, tmp_path / "ppo")
        latest = run.out / "checkpoints" / "latest"

        # SIGTERM to the launcher: every rank finishes the step, they checkpoint together, all exit 0
        launcher = run.start_learner(*flags, *TWO_RANKS)
        run.wait_for_step(2)
        launcher.send_signal(signal.SIGTERM)
        run.wait_learner()
        stopped_at = max(m["step"] for m in run.metrics())
        assert latest.read_text() == f"step-{stopped_at:06d}"
        log = (run.logs / "learner.log").read_text()
        saves = {*range(3, stopped_at + 1, 3), stopped_at}
        assert log.count("checkpoint saved") == len(saves)  # one each, written by the ranks together

        # SIGKILL one rank: the other exits too, within the bound, and the launcher says so
        launcher = run.start_learner(*flags, *TWO_RANKS, "--resume")
        kill_after = stopped_at + 2
        kill_after += kill_after % 3 == 0  # not a save step, so the kill loses a step
        run.wait_for_step(kill_after)
        ranks = ranks_of(launcher)
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        code = launcher.wait(DEAD_RANK_BOUND_S + 30)
        took = time.monotonic() - killed
        assert code != 0 and took < DEAD_RANK_BOUND_S, (code, took)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in ranks)
        killed_at = max(m["step"] for m in run.metrics())
        saved = int(latest.read_text().removeprefix("step-"))
        assert saved < killed_at < steps

        # the 2-rank checkpoint resumes at 1 rank and finishes: every step logged once
        run.start_learner(*flags, "--resume")
        run.wait_learner()

    print(f"dead rank: every rank gone {took:.1f}s after the SIGKILL")
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    rollouts = read_jsonl(run.out / "rollouts.jsonl")
    assert sorted({r["step"] for r in rollouts}) == list(range(1, steps + 1)) and len(rollouts) == steps * 8
    assert all(r["weights_version"] == r["step"] - 1 for r in rollouts)
    assert (run.out / "policy" / "config.json").exists()


# The single-process acceptance run's recipe and bound (test_learner_acceptance.py: +0.2 in ground truth).
TRUTH_GAIN = 0.2


def test_two_ranks_raise_the_ground_truth(trained, synth_dir, tmp_path, seed, record_figures):
    held_out = [json.loads(line)["prompt"] for line in (synth_dir / "prompts_eval.jsonl").read_text().splitlines()]
    with ExitStack() as stack:
        run = Run(stack, trained, tmp_path / "ppo", replicas=2)
        from rlhf.policy.client import PolicyClient
        from rlhf.reward.client import RewardClient

        policy = stack.enter_context(PolicyClient(run.policies[0].target))
        reward = stack.enter_context(RewardClient(run.reward.target))
        before = evaluate(policy, reward, held_out)
        run.start_learner(
            "--steps",
            "12",
            "--batch-size",
            "32",
            "--max-new-tokens",
            "12",
            "--min-new-tokens",
            "4",
            "--lr",
            "3e-4",
            "--early-stop-kl",
            "0.05",
            "--kl-coef",
            "0.3",
            "--seed",
            str(seed),
            "--save-every",
            "100",
            *TWO_RANKS,
        )
        run.wait_learner()
        after = evaluate(policy, reward, held_out)
    figures = {
        "two_rank_ground_truth_gain": after[1] - before[1],
        "kl_per_step_max": max(m["objective/kl"] for m in run.metrics()),
    }
    record_figures(figures, {"two_rank_ground_truth_gain": TRUTH_GAIN, "kl_per_step_max": 10.0})
    assert figures["two_rank_ground_truth_gain"] > TRUTH_GAIN
    assert figures["kl_per_step_max"] < 10.0


def test_lora_bf16_grpo_on_two_ranks_checkpoints_adapters_and_resumes_on_one(untrained, tmp_path):
    # 5 prompts x 2 samples in 2 minibatches of 5, 3 micro-batches each (2, 2, 1): the ranks split 3 + 2 prompts,
    # and a 1-sample micro-batch leaves rank 1 without a row, which then runs one at weight 0
    flags = [
        "--advantage-estimator",
        "grpo",
        "--samples-per-prompt",
        "2",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--precision",
        "bf16-true",
        "--gradient-checkpointing",
        "--save-every",
        "2",
        *SHORT,
        "--batch-size",
        "5",
        "--gradient-accumulation-steps",
        "3",
    ]
    with ExitStack() as stack:
        run = Run(stack, untrained, tmp_path / "ppo", replicas=2)
        run.start_learner("--steps", "2", *flags, *TWO_RANKS)
        run.wait_learner()
        saved = saved_tensors(run.out / "checkpoints" / "step-000002")
        run.start_learner("--steps", "3", *flags, "--resume")  # the 2-rank adapter checkpoint, at 1 rank
        run.wait_learner()

    assert saved and all(name.startswith("policy.") for name in saved)  # no critic with grpo
    assert all("lora_" in name for name in saved)  # the adapters alone: the base comes from --model again
    assert [m["step"] for m in run.metrics()] == [1, 2, 3]
    assert len(read_jsonl(run.out / "rollouts.jsonl")) == 3 * 10
    assert (run.out / "policy" / "adapter_config.json").exists() and (run.out / "policy" / "merged").is_dir()


def test_two_machines_meet_at_a_c10d_rendezvous_as_the_ppo_job_pods_do(untrained, tmp_path):
    # What each pod of the ppo Job runs (rlhf k8s submit ppo --nodes 2): here both "machines" are this one.
    from rlhf.toy.processes import free_port

    rendezvous = [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        "ppo",
        "--dist-timeout",
        DIST_TIMEOUT,
    ]
    with ExitStack() as stack:
        run = Run(stack, untrained, tmp_path / "ppo", replicas=2)
        pods = [run.start_learner("--steps", "2", "--save-every", "2", *SHORT, *rendezvous) for _ in range(2)]
        stack.callback(lambda: [pod.kill() for pod in pods if pod.poll() is None])
        codes = [pod.wait(hang_guard(LEARNER_HANG_GUARD_S)) for pod in pods]
    assert codes == [0, 0], (run.logs / "learner.log").read_text()[-4000:]
    assert [m["step"] for m in run.metrics()] == [1, 2]  # rank 0 alone logs
    ranks = sorted(p.name for p in (run.out / "checkpoints" / "step-000002" / "rng").iterdir())
    assert ranks == ["rank-00000.pt", "rank-00001.pt"]

"""Our GRPO through the services against TRL's GRPOTrainer in one process, side by side, same budget.

    .venv/bin/pip install -e '.[peers]'                    # trl, only for this script
    .venv/bin/python benchmarks/compare_trl.py             # 60 steps x 32 samples (groups of 8)
    .venv/bin/python benchmarks/compare_trl.py --steps 100 --samples 64 --workdir /tmp/algos

Both start from the same SFT model and score with the same reward model (the demo's recipe, trained once by
benchmarks/bench_algorithms.py's `prepare`; TRL calls it through `LocalReward`, the scorer our reward service
runs). Same prompts, group size, steps x samples, response length (4 to 12 tokens), learning rate, clip,
beta 0.3 with the k3 KL in the loss, one pass of 2 minibatches per generation batch, no PPO-ptx. Ground truth
is measured the same way for both: 4 samples per held-out prompt at a fixed seed, scored by the hidden rule.
Wall time is each RL stage's own: our learner's summed step time (the services already up), and TRL's
`trainer.train()`. Target: ours takes no more wall time than TRL's and reaches at least its ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars between the figures
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_algorithms as algos  # noqa: E402 - the shared models, services and evaluation

LR, BETA = 1e-3, 0.3


def run_trl(paths: dict, out: Path, steps: int, samples: int, seed: int) -> float:
    """TRL's GRPOTrainer with our settings; returns the seconds trainer.train() took."""
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from rlhf.core.modeling import load_tokenizer
    from rlhf.reward.local import LocalReward

    reward_model = LocalReward(str(paths["rm"]), device="cpu")

    def reward_model_score(prompts, completions, **_):
        return reward_model.score(list(zip(prompts, completions, strict=True)))

    prompts = [json.loads(line) for line in (paths["data"] / "prompts.jsonl").read_text().splitlines()]
    config = GRPOConfig(
        output_dir=str(out), use_cpu=True, report_to="none", save_strategy="no", logging_steps=max(1, steps // 10),
        seed=seed, max_steps=2 * steps,  # TRL counts optimizer steps: 2 minibatches per generation batch
        per_device_train_batch_size=samples // 2, steps_per_generation=2, num_generations=algos.GROUP,
        num_iterations=1, max_completion_length=12, generation_kwargs={"min_new_tokens": 4},
        learning_rate=LR, beta=BETA, epsilon=0.2, temperature=1.0, disable_dropout=True,
    )
    tokenizer = load_tokenizer(paths["sft"])
    trainer = GRPOTrainer(model=str(paths["sft"]), reward_funcs=reward_model_score, args=config,
                          train_dataset=datasets.Dataset.from_list([{"prompt": p["prompt"]} for p in prompts]),
                          processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.eval()
    trainer.model.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=32, help="samples per step (a multiple of 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and runs here (default: a temp dir)")
    args = parser.parse_args()
    try:
        import trl
    except ImportError:
        raise SystemExit("compare_trl.py needs TRL: .venv/bin/pip install -e '.[peers]'") from None

    from rlhf.core.processes import ServiceProcess

    algos.RECIPES["grpo"] = ["--ppo-epochs", "1", "--num-minibatches", "2", "--lr", str(LR), "--kl-coef", str(BETA),
                             "--kl-in", "loss", "--kl-estimator", "k3"]
    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compare-trl-")))
        paths = algos.prepare(workdir, args.seed)
        held_out = [json.loads(line)["prompt"] for line in (paths["data"] / "prompts_eval.jsonl").read_text()
                    .splitlines()]
        before = algos.evaluate(paths["sft"], paths["rm"], held_out)

        trl_seconds = run_trl(paths, workdir / "runs" / "trl-grpo", args.steps, args.samples, args.seed)
        theirs = algos.evaluate(workdir / "runs" / "trl-grpo" / "policy", paths["rm"], held_out)

        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        targets = {}
        for name, model in (("policy", paths["sft"]), ("reward", paths["rm"]), ("reference", paths["sft"])):
            proc = ServiceProcess(["serve", name, "--model", str(model), "--device", "cpu"],
                                  log_path=workdir / "logs" / f"{name}.log", name=name, env={"OMP_NUM_THREADS": "1"})
            targets[name] = stack.enter_context(proc).target
        run = algos.run_estimator("grpo", paths, targets, workdir / "runs" / "grpo", args.steps, args.samples,
                                  args.seed, ptx=False)
        ours = algos.evaluate(workdir / "runs" / "grpo" / "policy", paths["rm"], held_out)

    print(f"\n{args.steps} steps x {args.samples} samples (groups of {algos.GROUP}), seed {args.seed}, "
          f"TRL {trl.__version__}")
    print(f"{'':<28} {'ground truth':>20} {'reward model':>13} {'RL s':>7}")
    print(f"{'SFT':<28} {before['ground_truth']:+20.3f} {before['reward']:+13.3f}")
    for name, result, seconds in (("rlhf GRPO, three services", ours, run["rl_seconds"]),
                                  ("TRL GRPOTrainer, 1 process", theirs, trl_seconds)):
        print(f"{name:<28} {before['ground_truth']:+9.3f} -> {result['ground_truth']:+7.3f} "
              f"{result['reward']:+13.3f} {seconds:7.1f}")
    time_ratio = run["rl_seconds"] / trl_seconds
    truth_ok = ours["ground_truth"] >= theirs["ground_truth"]
    print(f"target: wall time <= TRL's ({time_ratio:.2f}x: {'met' if time_ratio <= 1 else 'missed'}), ground truth "
          f">= TRL's ({'met' if truth_ok else 'missed'})")
    return 0 if time_ratio <= 1 and truth_ok else 1


if __name__ == "__main__":
    sys.exit(main())

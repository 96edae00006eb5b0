"""Our GRPO through the services against TRL's GRPOTrainer in one process, side by side, same budget.

    .venv/bin/pip install -e '.[peers]'                    # trl, only for this script
    .venv/bin/python benchmarks/compare_trl.py             # 60 steps x 32 samples (groups of 8), seed 0
    .venv/bin/python benchmarks/compare_trl.py --steps 100 --samples 64 --seeds 0 1 2 3 4 --workdir /tmp/trl
    .venv/bin/python benchmarks/compare_trl.py --rollout-ahead 1 --split-cores 0 1 --seeds 0 1 2   # async, cores split

Both start from the same SFT model and score with the same reward model (the demo's recipe, trained once per
seed by benchmarks/bench_algorithms.py's `prepare`; TRL calls it through `LocalReward`, the scorer our reward
service runs). Same prompts, group size, steps x samples, response length (4 to 12 tokens), learning rate,
clip, beta 0.3 with the k3 KL in the loss (ratio-corrected in both: TRL's use_bias_correction_kl, our
--kl-ratio-correction), one pass of 2 minibatches per generation batch, no PPO-ptx. Ground truth is measured
the same way for both: 4 samples per held-out prompt at a fixed seed, scored by the hidden rule. Wall time is
each RL stage's own: our learner's summed step time (the services already up), and TRL's `trainer.train()`.

One run is chaotic: a 1e-7 change in one loss moves a seed's final ground truth by about 0.2. So the target
is judged on the means over --seeds, printed with their standard errors: ours takes no more wall time than
TRL's and reaches at least its ground truth.
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
        output_dir=str(out),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, steps // 10),
        seed=seed,
        max_steps=2 * steps,  # TRL counts optimizer steps: 2 minibatches per generation batch
        per_device_train_batch_size=samples // 2,
        steps_per_generation=2,
        num_generations=algos.GROUP,
        num_iterations=1,
        max_completion_length=12,
        generation_kwargs={"min_new_tokens": 4},
        learning_rate=LR,
        beta=BETA,
        epsilon=0.2,
        temperature=1.0,
        disable_dropout=True,
        use_bias_correction_kl=True,  # TRL's default, stated: ours is --kl-ratio-correction, also on
    )
    tokenizer = load_tokenizer(paths["sft"])
    trainer = GRPOTrainer(
        model=str(paths["sft"]),
        reward_funcs=reward_model_score,
        args=config,
        train_dataset=datasets.Dataset.from_list([{"prompt": p["prompt"]} for p in prompts]),
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.eval()
    trainer.model.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    return seconds


def compare_one_seed(workdir: Path, steps: int, samples: int, seed: int, split: dict | None = None) -> dict:
    """SFT, TRL's run and ours for one seed; ground truth before and after, and each RL stage's seconds. With
    `split` ({"learner": cores, "services": cores}), TRL's one process gets all those cores, and ours its learner
    on the learner's cores and the services on theirs (affinity is inherited when a process starts)."""
    from rlhf.toy.processes import ServiceProcess

    paths = algos.prepare(workdir, seed)
    held_out = [json.loads(line)["prompt"] for line in (paths["data"] / "prompts_eval.jsonl").read_text().splitlines()]
    before = algos.evaluate(paths["sft"], paths["rm"], held_out)
    everywhere = os.sched_getaffinity(0)
    if split:
        import torch

        os.sched_setaffinity(0, split["learner"] | split["services"])
        torch.set_num_threads(len(split["learner"] | split["services"]))
    trl_seconds = run_trl(paths, workdir / "runs" / "trl-grpo", steps, samples, seed)
    theirs = algos.evaluate(workdir / "runs" / "trl-grpo" / "policy", paths["rm"], held_out)
    with ExitStack() as stack:
        stack.callback(os.sched_setaffinity, 0, everywhere)
        if split:
            os.sched_setaffinity(0, split["services"])
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        targets = {}
        for name, model in (("policy", paths["sft"]), ("reward", paths["rm"]), ("reference", paths["sft"])):
            proc = ServiceProcess(
                ["serve", name, "--model", str(model), "--device", "cpu"],
                log_path=workdir / "logs" / f"{name}.log",
                name=name,
                env={"OMP_NUM_THREADS": "1"},
            )
            targets[name] = stack.enter_context(proc).target
        if split:
            os.sched_setaffinity(0, split["learner"])
            os.environ["OMP_NUM_THREADS"] = str(len(split["learner"]))  # the learner's subprocess inherits both
        run = algos.run_estimator("grpo", paths, targets, workdir / "runs" / "grpo", steps, samples, seed, ptx=False)
    ours = algos.evaluate(workdir / "runs" / "grpo" / "policy", paths["rm"], held_out)
    return {
        "seed": seed,
        "before": before,
        "ours": ours | {"seconds": run["rl_seconds"]},
        "trl": theirs | {"seconds": trl_seconds},
    }


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, (variance / len(values)) ** 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=32, help="samples per step (a multiple of 8)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of each side per seed")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep models and runs here, one subdir per seed (default: a temp dir)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--rollout-ahead", type=int, default=0, help="our learner's --rollout-ahead (async rollouts)")
    parser.add_argument(
        "--split-cores",
        nargs=2,
        metavar=("LEARNER", "SERVICES"),
        default=None,
        help="e.g. 0 1: our learner on core 0 and the services on core 1; TRL's one process on both",
    )
    args = parser.parse_args()
    try:
        import trl
    except ImportError:
        raise SystemExit("compare_trl.py needs TRL: .venv/bin/pip install -e '.[peers]'") from None

    algos.RECIPES["grpo"] = [
        "--ppo-epochs",
        "1",
        "--num-minibatches",
        "2",
        "--lr",
        str(LR),
        "--kl-coef",
        str(BETA),
        "--kl-in",
        "loss",
        "--kl-estimator",
        "k3",
        "--rollout-ahead",
        str(args.rollout_ahead),
    ]
    split = None
    if args.split_cores:
        from bench_async import cores

        split = {"learner": cores(args.split_cores[0]), "services": cores(args.split_cores[1])}
        print(
            f"cores: ours, learner {sorted(split['learner'])}, services {sorted(split['services'])}; TRL, all of them"
        )
    with ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="compare-trl-")))
        results = []
        for seed in args.seeds:
            results.append(compare_one_seed(root / f"seed-{seed}", args.steps, args.samples, seed, split))
            r = results[-1]
            print(
                f"seed {seed}: SFT {r['before']['ground_truth']:+.3f}, ours {r['ours']['ground_truth']:+.3f} in "
                f"{r['ours']['seconds']:.1f} s, TRL {r['trl']['ground_truth']:+.3f} in {r['trl']['seconds']:.1f} s",
                flush=True,
            )

    print(f"\n{args.steps} steps x {args.samples} samples (groups of {algos.GROUP}), TRL {trl.__version__}")
    print(f"{'seed':<6} {'SFT':>7} {'rlhf GRPO (services)':>22} {'TRL GRPOTrainer':>22} {'time, ours/TRL':>15}")
    for r in results:
        print(
            f"{r['seed']:<6} {r['before']['ground_truth']:+7.3f} "
            f"{r['ours']['ground_truth']:+9.3f} in {r['ours']['seconds']:6.1f} s "
            f"{r['trl']['ground_truth']:+9.3f} in {r['trl']['seconds']:6.1f} s "
            f"{r['ours']['seconds'] / r['trl']['seconds']:14.2f}x"
        )
    summary = {
        side: {
            key: mean_and_error(
                [r[side][key] - (r["before"]["ground_truth"] if key == "ground_truth" else 0.0) for r in results]
            )
            for key in ("ground_truth", "seconds")
        }
        for side in ("ours", "trl")
    }
    for side, name in (("ours", "rlhf GRPO"), ("trl", "TRL GRPOTrainer")):
        gain, seconds = summary[side]["ground_truth"], summary[side]["seconds"]
        print(
            f"{name:<16} mean ground-truth gain {gain[0]:+.3f} +- {gain[1]:.3f}, RL time {seconds[0]:.1f} "
            f"+- {seconds[1]:.1f} s"
        )
    time_ratio = summary["ours"]["seconds"][0] / summary["trl"]["seconds"][0]
    truth_ok = summary["ours"]["ground_truth"][0] >= summary["trl"]["ground_truth"][0]
    print(
        f"target, on the means over {len(results)} seed(s): wall time <= TRL's ({time_ratio:.2f}x: "
        f"{'met' if time_ratio <= 1 else 'missed'}), ground-truth gain >= TRL's ({'met' if truth_ok else 'missed'})"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "summary": summary, "steps": args.steps, "samples": args.samples}, indent=2)
        )
    return 0 if time_ratio <= 1 and truth_ok else 1


if __name__ == "__main__":
    sys.exit(main())

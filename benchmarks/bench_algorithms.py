"""Every advantage estimator at an equal sample budget on the synthetic task, through the real services.

    .venv/bin/python benchmarks/bench_algorithms.py                        # 60 steps x 32 samples each
    .venv/bin/python benchmarks/bench_algorithms.py --steps 100 --samples 64 --only gae grpo
    .venv/bin/python benchmarks/bench_algorithms.py --workdir /tmp/algos    # keep (and reuse) the models

One SFT and one reward model are trained through the CLI (the demo's recipe); then the policy, reward and
reference services start once as processes, and `rlhf train ppo` runs once per estimator against them
(each run pushes its own start weights, the SFT model's, to the replica first). Every run gets the same
steps x samples per step. The final policies are scored on the held-out prompts, 4 samples each at a fixed
seed: mean ground truth (the hidden rule) and reward-model score. RL wall time is the learner's own
summed step time. Target: GRPO's ground-truth gain is at least PPO's (gae), in at most 40% of its time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars between the figures
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET_TIME_RATIO = 0.40
GROUP = 8  # samples per prompt for the group estimators
COMMON = ["--lr", "3e-4", "--kl-coef", "0.3", "--min-new-tokens", "4", "--max-new-tokens", "12", "--save-every", "1000"]
# Each estimator's recipe; the sample budget (--batch-size x --samples-per-prompt) is set per run. The
# critic-free ones take one pass of 2 minibatches at lr 1e-3 (tuned on seeds 0-2: on this task more passes buy
# little, and a pass without a critic costs about a ninth of PPO's 4 epochs x 4 minibatches over two models).
CRITIC_FREE = ["--ppo-epochs", "1", "--num-minibatches", "2", "--lr", "1e-3"]
KL_IN_LOSS = ["--kl-in", "loss", "--kl-estimator", "k3"]
RECIPES = {
    "gae": ["--early-stop-kl", "0.05"],  # the demo's PPO: 4 epochs x 4 minibatches, value model
    "grpo": [*CRITIC_FREE, *KL_IN_LOSS],
    "rloo": CRITIC_FREE,
    "reinforce++": CRITIC_FREE,
    "reinforce++-baseline": [*CRITIC_FREE, *KL_IN_LOSS],
}
# The same recipes with LoRA (r 8 on every attention and MLP projection) under bf16-mixed: the adapters take a
# 3x higher learning rate, as LoRA usually does.
LORA = ["--lora-r", "8", "--lora-alpha", "16", "--precision", "bf16-mixed"]
RECIPES |= {
    "gae-lora": [*RECIPES["gae"], *LORA, "--lr", "1e-3"],
    "grpo-lora": [*RECIPES["grpo"], *LORA, "--lr", "3e-3"],
}


def estimator_of(recipe: str) -> str:
    return recipe.removesuffix("-lora")


def rlhf_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhf", "--log-level", "WARNING", *args]


def prepare(workdir: Path, seed: int, pretrained_base: bool = False) -> dict[str, Path]:
    """The tiny base model, the synthetic task, SFT and the reward model (reused if already in workdir). With
    pretrained_base, SFT starts from the tiny model pretrained on the task's plain text (synthetic.base_text),
    a base that knows the task's language, as a real one knows its own."""
    paths = {name: workdir / name for name in ("base", "data", "sft", "rm")}
    sft_base = paths["base"]
    steps = [
        ("base", ["tiny-model", "--out", str(paths["base"]), "--seed", str(seed)]),
        ("data", ["data", "synth", "--out", str(paths["data"]), "--seed", str(seed), "--preference-scale", "3"]),
    ]
    if pretrained_base:
        from rlhf.toy.synthetic import write_base_text

        paths["pretrained"] = sft_base = workdir / "pretrained"
        text = workdir / "base-text.jsonl"
        if not text.exists():
            write_base_text(text, seed)
        steps.append(
            (
                "pretrained",
                [
                    "train",
                    "sft",
                    "--model",
                    str(paths["base"]),
                    "--data",
                    str(text),
                    "--out",
                    str(sft_base),
                    "--lr",
                    "3e-3",
                    "--epochs",
                    "2",
                    "--batch-size",
                    "32",
                    "--seed",
                    str(seed),
                    "--device",
                    "cpu",
                ],
            )
        )
    steps += [
        (
            "sft",
            [
                "train",
                "sft",
                "--model",
                str(sft_base),
                "--data",
                str(paths["data"] / "sft.jsonl"),
                "--out",
                str(paths["sft"]),
                "--lr",
                "3e-3",
                "--batch-size",
                "32",
                "--seed",
                str(seed),
                "--device",
                "cpu",
            ],
        ),
        (
            "rm",
            [
                "train",
                "rm",
                "--model",
                str(paths["sft"]),
                "--data",
                str(paths["data"] / "preferences.jsonl"),
                "--out",
                str(paths["rm"]),
                "--epochs",
                "1",
                "--lr",
                "1e-3",
                "--adam-beta2",
                "0.95",
                "--batch-size",
                "16",
                "--max-length",
                "64",
                "--seed",
                str(seed),
                "--device",
                "cpu",
            ],
        ),
    ]
    for name, args in steps:
        if not (paths[name] / ("prompts.jsonl" if name == "data" else "config.json")).exists():
            print(f"preparing {name} ...", flush=True)
            subprocess.run(rlhf_command(*args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return paths


def evaluate(policy_dir: Path, rm_dir: Path, prompts: list[str]) -> dict[str, float]:
    """Mean ground truth and reward-model score of 4 samples per held-out prompt, fixed seed."""
    from rlhf.core.types import GenerationParams
    from rlhf.policy.local import LocalPolicy
    from rlhf.reward.local import LocalReward
    from rlhf.toy.synthetic import ground_truth_score

    samples = LocalPolicy(str(policy_dir), device="cpu").generate(
        prompts, GenerationParams(max_new_tokens=12, n=4, seed=1234)
    )
    items = [(prompts[s.prompt_index], s.response_text) for s in samples]
    scores = LocalReward(str(rm_dir), device="cpu").score(items)
    return {
        "ground_truth": sum(ground_truth_score(p, r) for p, r in items) / len(items),
        "reward": sum(scores) / len(scores),
    }


def run_estimator(
    estimator: str, paths: dict, targets: dict, out: Path, steps: int, samples: int, seed: int, ptx: bool = True
) -> dict:
    """`rlhf train ppo` with one estimator's recipe; its RL wall time and KL."""
    recipe, estimator = estimator, estimator_of(estimator)
    group = 1 if estimator in ("gae", "reinforce++") else GROUP
    pretraining = ["--ptx-data", str(paths["data"] / "pretrain.jsonl"), "--ptx-coef", "0.05", "--ptx-batch-size", "4"]
    command = rlhf_command(
        "train",
        "ppo",
        "--model",
        str(paths["sft"]),
        "--value-model",
        str(paths["rm"]),
        "--policy",
        targets["policy"],
        "--reward",
        targets["reward"],
        "--reference",
        targets["reference"],
        "--prompts",
        str(paths["data"] / "prompts.jsonl"),
        *(pretraining if ptx else []),
        "--out",
        str(out),
        "--overwrite",
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--device",
        "cpu",
        "--port",
        "0",
        "--advantage-estimator",
        estimator,
        "--batch-size",
        str(samples // group),
        "--samples-per-prompt",
        str(group),
        *COMMON,
        *RECIPES[recipe],
    )
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{recipe}: the learner failed:\n{result.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "rl_seconds": sum(m["time/step"] for m in metrics),
        "process_seconds": wall,
        "final_kl": metrics[-1]["objective/kl"],
        "max_kl": max(m["objective/kl"] for m in metrics),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=32, help="samples per step (a multiple of 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and runs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--pretrained-base",
        action="store_true",
        help="start SFT from the tiny model pretrained on the task's plain text, not from random init",
    )
    args = parser.parse_args()
    if args.samples % GROUP:
        parser.error(f"--samples must be a multiple of {GROUP}")

    from rlhf.toy.processes import ServiceProcess

    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-algos-")))
        paths = prepare(workdir, args.seed, args.pretrained_base)
        held_out = [
            json.loads(line)["prompt"] for line in (paths["data"] / "prompts_eval.jsonl").read_text().splitlines()
        ]
        targets = {}
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        for name, model in (("policy", paths["sft"]), ("reward", paths["rm"]), ("reference", paths["sft"])):
            proc = ServiceProcess(
                ["serve", name, "--model", str(model), "--device", "cpu"],
                log_path=workdir / "logs" / f"{name}.log",
                name=name,
                env={"OMP_NUM_THREADS": "1"},
            )
            targets[name] = stack.enter_context(proc).target
        before = evaluate(paths["sft"], paths["rm"], held_out)
        print(f"SFT policy: ground truth {before['ground_truth']:+.3f}, reward {before['reward']:+.3f}")
        results = {}
        for estimator in args.only:
            run = run_estimator(
                estimator, paths, targets, workdir / "runs" / estimator, args.steps, args.samples, args.seed
            )
            run |= evaluate(workdir / "runs" / estimator / "policy", paths["rm"], held_out)
            results[estimator] = run
            print(
                f"{estimator:<21} ground truth {before['ground_truth']:+.3f} -> {run['ground_truth']:+.3f}  "
                f"reward {run['reward']:+.3f}  KL final {run['final_kl']:.2f} (max {run['max_kl']:.2f})  "
                f"RL {run['rl_seconds']:.0f} s",
                flush=True,
            )

    print(f"\n{args.steps} steps x {args.samples} samples per estimator (seed {args.seed})")
    print(f"{'estimator':<21} {'ground truth':>20} {'gain':>7} {'final KL':>9} {'RL s':>7} {'vs gae':>7}")
    base = results.get("gae")
    for estimator, r in results.items():
        gain = r["ground_truth"] - before["ground_truth"]
        ratio = f"{r['rl_seconds'] / base['rl_seconds']:.2f}x" if base else "-"
        print(
            f"{estimator:<21} {before['ground_truth']:+9.3f} -> {r['ground_truth']:+7.3f} {gain:+7.3f} "
            f"{r['final_kl']:9.2f} {r['rl_seconds']:7.0f} {ratio:>7}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"before": before, "results": results, "steps": args.steps, "samples": args.samples, "seed": args.seed},
                indent=2,
            )
        )
    if base and "grpo" in results:
        grpo = results["grpo"]
        gain_ok = grpo["ground_truth"] - before["ground_truth"] >= base["ground_truth"] - before["ground_truth"]
        time_ratio = grpo["rl_seconds"] / base["rl_seconds"]
        time_ok = time_ratio <= TARGET_TIME_RATIO
        print(
            f"target: GRPO gain >= PPO gain ({'met' if gain_ok else 'missed'}), GRPO time <= "
            f"{TARGET_TIME_RATIO:.0%} of PPO's ({time_ratio:.0%}: {'met' if time_ok else 'missed'})"
        )
        return 0 if gain_ok and time_ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Async rollouts against lockstep: the same SFT model, reward model, prompts and sample budget at --rollout-ahead
0, 1 and 2, and with 2 policy replicas, through the real services as processes.

    .venv/bin/python benchmarks/bench_async.py                                  # 30 steps x 32 samples, seeds 0-2
    .venv/bin/python benchmarks/bench_async.py --steps 60 --seeds 0 1 2 3 4 --workdir /tmp/async
    .venv/bin/python benchmarks/bench_async.py --steps 4 --seeds 0 --only lockstep ahead-1   # a smoke run

Each process gets its own cores, as separate GPUs or pods would have: the learner on --learner-cores, the policy,
reward and reference services on --services-cores (taskset, OMP_NUM_THREADS one thread per core); the split is
printed. Models come from benchmarks/bench_algorithms.py's `prepare` (the demo's recipe, once per seed), and
every setting runs `rlhf train grpo` (GRPO's own recipe, at bench_algorithms' learning rate and beta) for the
same steps x samples. Printed per setting: steps/s (steps over the learner's summed step time), the ratio to
lockstep, the learner's and the services' idle time, the final ground truth (held-out prompts, 4 samples each,
the hidden rule) with its standard error over the seeds, and the staleness trained on.
Target (issue 22): at --rollout-ahead 1, at least 1.3x lockstep's steps/s, final ground truth within one
standard error of lockstep's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_algorithms as algos  # noqa: E402 - the shared models, services and evaluation
from compare_trl import mean_and_error  # noqa: E402

TARGET_SPEEDUP = 1.3
# name -> (--rollout-ahead, policy replicas)
SETTINGS = {
    "lockstep": (0, 1),
    "ahead-1": (1, 1),
    "ahead-2": (2, 1),
    "lockstep-2-replicas": (0, 2),
    "ahead-1-2-replicas": (1, 2),
}
RECIPE = ["--lr", "1e-3", "--kl-coef", "0.3", "--samples-per-prompt", str(algos.GROUP)]


def cores(spec: str) -> set[int]:
    """'0' or '1-3' or '0,2' -> a set of core numbers."""
    out: set[int] = set()
    for part in spec.split(","):
        low, _, high = part.partition("-")
        out |= set(range(int(low), int(high or low) + 1))
    return out


def run_learner(
    setting: str, paths: dict, targets: dict, out: Path, steps: int, samples: int, seed: int, learner_cores: set[int]
) -> dict:
    """`rlhf train grpo` on the learner's cores; its figures from metrics.jsonl."""
    ahead, replicas = SETTINGS[setting]
    command = algos.rlhf_command(
        "train",
        "grpo",
        "--model",
        str(paths["sft"]),
        "--policy",
        ",".join(targets["policy"][:replicas]),
        "--reward",
        targets["reward"],
        "--reference",
        targets["reference"],
        "--prompts",
        str(paths["data"] / "prompts.jsonl"),
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
        "--batch-size",
        str(samples // algos.GROUP),
        "--rollout-ahead",
        str(ahead),
        *algos.COMMON,
        *RECIPE,
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(len(learner_cores))}
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, preexec_fn=lambda: os.sched_setaffinity(0, learner_cores)
    )
    if result.returncode != 0:
        raise SystemExit(f"{setting}: the learner failed:\n{result.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(m["time/step"] for m in metrics)
    return {
        "steps_per_second": len(metrics) / seconds,
        "rl_seconds": seconds,
        "learner_idle": sum(m.get("time/learner_idle", 0.0) for m in metrics),
        "services_idle": sum(m.get("time/services_idle", 0.0) for m in metrics),
        "staleness_mean": sum(m.get("rollout/staleness_mean", 0.0) for m in metrics) / len(metrics),
        "staleness_max": max(m.get("rollout/staleness_max", 0.0) for m in metrics),
        "dropped_stale": sum(m.get("rollout/dropped_stale", 0.0) for m in metrics),
        "final_kl": metrics[-1]["objective/kl"],
    }


def one_seed(workdir: Path, settings: list[str], steps: int, samples: int, seed: int, split: dict) -> dict:
    """Every setting on one seed's models, against one set of services started on the services' cores."""
    from rlhf.toy.processes import ServiceProcess

    paths = algos.prepare(workdir, seed)
    held_out = [json.loads(line)["prompt"] for line in (paths["data"] / "prompts_eval.jsonl").read_text().splitlines()]
    before = algos.evaluate(paths["sft"], paths["rm"], held_out)
    results = {}
    with ExitStack() as stack:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        threads = {"OMP_NUM_THREADS": str(len(split["services"]))}
        os.sched_setaffinity(0, split["services"])  # the services inherit the bench's cores
        targets: dict = {"policy": []}
        services = [("policy-0", paths["sft"]), ("reward", paths["rm"]), ("reference", paths["sft"])]
        services += [("policy-1", paths["sft"])] if any(SETTINGS[s][1] > 1 for s in settings) else []
        for name, model in services:
            kind = name.split("-")[0]
            proc = ServiceProcess(
                ["serve", kind, "--model", str(model), "--device", "cpu"],
                log_path=workdir / "logs" / f"{name}.log",
                name=name,
                env=threads,
            )
            target = stack.enter_context(proc).target
            targets["policy"].append(target) if kind == "policy" else targets.__setitem__(kind, target)
        for setting in settings:
            run = run_learner(
                setting, paths, targets, workdir / "runs" / setting, steps, samples, seed, split["learner"]
            )
            run |= algos.evaluate(workdir / "runs" / setting / "policy", paths["rm"], held_out)
            results[setting] = run
            print(
                f"seed {seed} {setting:<20} {run['steps_per_second']:.3f} steps/s, ground truth "
                f"{before['ground_truth']:+.3f} -> {run['ground_truth']:+.3f}, "
                f"staleness max {run['staleness_max']:.0f}",
                flush=True,
            )
    return {"seed": seed, "before": before, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--samples", type=int, default=32, help=f"samples per step (a multiple of {algos.GROUP})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--learner-cores", default="0", help="cores for the learner (taskset), e.g. 0 or 0-3")
    parser.add_argument("--services-cores", default="1", help="cores for the policy, reward and reference services")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and runs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.samples % algos.GROUP:
        parser.error(f"--samples must be a multiple of {algos.GROUP}")
    split = {"learner": cores(args.learner_cores), "services": cores(args.services_cores)}
    available = os.sched_getaffinity(0)
    if not (split["learner"] | split["services"]) <= available:
        parser.error(f"cores {sorted(split['learner'] | split['services'])} asked for, {sorted(available)} available")
    print(
        f"cores: learner {sorted(split['learner'])} (OMP_NUM_THREADS={len(split['learner'])}), policy + reward + "
        f"reference services {sorted(split['services'])} (OMP_NUM_THREADS={len(split['services'])})",
        flush=True,
    )
    with ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-async-")))
        runs = [
            one_seed(root / f"seed-{seed}", args.only, args.steps, args.samples, seed, split) for seed in args.seeds
        ]
    os.sched_setaffinity(0, available)

    def over_seeds(setting: str, key: str) -> tuple[float, float]:
        return mean_and_error([run["results"][setting][key] for run in runs])

    print(f"\n{args.steps} steps x {args.samples} samples (groups of {algos.GROUP}), seeds {args.seeds}")
    print(
        f"{'setting':<21} {'steps/s':>8} {'vs lockstep':>11} {'learner idle s':>15} {'services idle s':>16} "
        f"{'ground truth':>16} {'staleness mean/max':>19} {'dropped':>8}"
    )
    lockstep = over_seeds("lockstep", "steps_per_second")[0] if "lockstep" in args.only else None
    summary = {}
    for setting in args.only:
        speed, truth = over_seeds(setting, "steps_per_second"), over_seeds(setting, "ground_truth")
        summary[setting] = {
            key: over_seeds(setting, key)
            for key in ("steps_per_second", "learner_idle", "services_idle", "ground_truth", "staleness_mean")
        } | {"staleness_max": max(run["results"][setting]["staleness_max"] for run in runs)}
        ratio = f"{speed[0] / lockstep:.2f}x" if lockstep else "-"
        s = summary[setting]
        print(
            f"{setting:<21} {speed[0]:8.3f} {ratio:>11} {s['learner_idle'][0]:15.1f} {s['services_idle'][0]:16.1f} "
            f"{truth[0]:+8.3f} +- {truth[1]:.3f} {s['staleness_mean'][0]:11.2f} / {s['staleness_max']:<5.0f} "
            f"{sum(run['results'][setting]['dropped_stale'] for run in runs):8.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"runs": runs, "summary": summary, "split": {k: sorted(v) for k, v in split.items()}}, indent=2)
        )
    if lockstep and "ahead-1" in summary:
        speedup = summary["ahead-1"]["steps_per_second"][0] / lockstep
        truth, base = summary["ahead-1"]["ground_truth"], summary["lockstep"]["ground_truth"]
        truth_ok = abs(truth[0] - base[0]) <= max(base[1], truth[1])
        print(
            f"target: --rollout-ahead 1 at >= {TARGET_SPEEDUP}x lockstep's steps/s ({speedup:.2f}x: "
            f"{'met' if speedup >= TARGET_SPEEDUP else 'missed'}), ground truth within one s.e. of lockstep's "
            f"({'met' if truth_ok else 'missed'})"
        )
        return 0 if speedup >= TARGET_SPEEDUP and truth_ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

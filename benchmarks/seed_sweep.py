"""Seed sweep: every learning test's own settings over several seeds, with each seed's figures side by side.

    .venv/bin/python benchmarks/seed_sweep.py                       # seeds 0-4: every learning test + demo
    .venv/bin/python benchmarks/seed_sweep.py --seeds 0 1 2 --only ppo rm
    .venv/bin/python benchmarks/seed_sweep.py --isa avx2             # float kernels of a CPU without AVX-512
    .venv/bin/python benchmarks/seed_sweep.py --only demo --demo-size full

The learning tests record their figures and the bound each one asserts (`record_figures` in
tests/conftest.py). This script runs those tests themselves, with RLHF_TEST_SEED set, so what it sweeps
is exactly what the tests run; a seed that misses a bound shows up here as a negative margin (the test
itself fails). The demo runs through `rlhf demo --seed S` and is held to the bounds below, which the
docs/benchmarks.md quotes. `--isa avx2` makes torch, MKL and oneDNN use AVX2 kernels only, as on the AVX2-only
machines that CI may run on: their float results differ in the last bits, and with them a training run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = {
    "sft": [
        "tests/training/test_sft.py::test_sft_on_the_synthetic_task_lowers_the_held_out_response_loss",
        "tests/policy/test_cli.py::test_train_serve_and_generate_through_the_cli",
    ],
    "rm": ["tests/training/test_rm.py::test_held_out_accuracy_against_the_ground_truth_rule_clears_the_bound"],
    "ppo": ["tests/learner/test_learner_acceptance.py::test_ppo_raises_reward_and_ground_truth_within_kl_bound"],
    "lora-ppo": [
        "tests/learner/test_learner_acceptance.py::test_lora_bf16_ppo_through_the_services_raises_the_ground_truth"
    ],
    "lora-sft": [
        "tests/reward/test_lora_stages.py::test_lora_sft_from_a_pretrained_base_reaches_full_sfts_held_out_loss"
    ],
    "dpo": ["tests/training/test_dpo.py::test_dpo_through_the_cli_raises_the_ground_truth"],
    "critic-free": ["tests/learner/test_critic_free_acceptance.py::test_critic_free_estimators_raise_the_ground_truth"],
    "async": [
        "tests/learner/test_async_acceptance.py::test_one_step_ahead_raises_the_ground_truth_within_the_kl_bound"
    ],
}
# `rlhf demo` sizes: reduced (what the sweep runs by default) and full (`make demo`).
DEMO_SIZES = {"reduced": ["--data-scale", "0.5", "--steps", "30", "--eval-prompts", "32"], "full": []}
# What the demo must show on every seed (docs/demo.md): ground truth up, KL bounded at every step.
DEMO_BOUNDS = {"ground_truth_gain": 0.3, "reward_model_gain": 0.3, "kl_per_step_max": 5.0}
ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "native": {},
}


def run_tests(seed: int, ids: list[str], env: dict) -> list[dict]:
    """Run the tests with RLHF_TEST_SEED=seed: the figures each recorded, marked passed or not. A test that
    ended before it recorded any (an error, a timeout) gets a row of its own with no figures."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "figures.jsonl"
        env = {**env, "RLHF_TEST_SEED": str(seed), "RLHF_SWEEP_RECORD": str(record)}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *ids],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    passed = set(re.findall(r"^PASSED (\S+)", result.stdout, flags=re.M))
    for row in rows:
        row["passed"] = row["test"] in passed
    for test in set(ids) - {r["test"] for r in rows}:
        print(f"seed {seed}: {test} recorded no figures:\n{result.stdout[-3000:]}", file=sys.stderr)
        rows.append({"test": test, "seed": seed, "figures": {}, "bounds": {}, "passed": False})
    return rows


def run_demo(seed: int, size: str, env: dict) -> dict:
    """`rlhf demo --seed seed` at `size`; its figures against DEMO_BOUNDS."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "rlhf.cli", "demo", "--workdir", tmp, "--seed", str(seed), *DEMO_SIZES[size]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            print(f"demo seed {seed} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", file=sys.stderr)
            return {"test": f"rlhf demo ({size})", "seed": seed, "figures": {}, "bounds": {}, "passed": False}
        report = json.loads((Path(tmp) / "report.json").read_text())
        metrics = [json.loads(line) for line in (Path(tmp) / "ppo" / "metrics.jsonl").read_text().splitlines()]
    figures = {
        "ground_truth_gain": report["ppo"]["ground_truth"] - report["sft"]["ground_truth"],
        "reward_model_gain": report["ppo"]["reward"] - report["sft"]["reward"],
        "kl_per_step_max": max(m["objective/kl"] for m in metrics),
        "ground_truth_sft": report["sft"]["ground_truth"],
        "ground_truth_ppo": report["ppo"]["ground_truth"],
        "reward_model_accuracy": report["reward_model_accuracy"],
        "seconds": seconds,
    }
    return {
        "test": f"rlhf demo ({size})",
        "seed": seed,
        "figures": figures,
        "bounds": DEMO_BOUNDS,
        "passed": all(margin(figures, DEMO_BOUNDS, k) >= 0 for k in DEMO_BOUNDS),
    }


def margin(figures: dict, bounds: dict, name: str) -> float:
    """How far a figure clears its bound: positive is inside, negative a miss."""
    if name.endswith("_max"):
        return bounds[name] - figures[name]
    return figures[name] - bounds[name]


def print_table(rows: list[dict]) -> None:
    """One block per test: a line per seed, then the worst seed of each bounded figure and its margin."""
    for test in dict.fromkeys(r["test"] for r in rows):
        broken = [r for r in rows if r["test"] == test and not r["figures"]]
        mine = [r for r in rows if r["test"] == test and r["figures"]]
        if broken:
            print(f"\n{test}: no figures for seed(s) {', '.join(str(r['seed']) for r in broken)} (it failed early)")
        if not mine:
            continue
        names = list(mine[0]["figures"])
        print(f"\n{test}")
        print("  seed  " + "  ".join(f"{n:>22}" for n in names) + "  passed")
        for r in mine:
            print(f"  {r['seed']:>4}  " + "  ".join(f"{r['figures'][n]:>22.4f}" for n in names) + f"  {r['passed']}")
        for name, bound in mine[0]["bounds"].items():
            worst = min(mine, key=lambda r: margin(r["figures"], r["bounds"], name))
            print(
                f"  {name}: bound {bound:g}; worst seed {worst['seed']} at {worst['figures'][name]:.4f} "
                f"(margin {margin(worst['figures'], worst['bounds'], name):+.4f})"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds (default 0-4)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*TESTS, "demo"],
        default=[*TESTS, "demo"],
        help="which learning runs (default: all)",
    )
    parser.add_argument(
        "--isa",
        choices=list(ISA_ENV),
        default="native",
        help="native, or avx2: torch/MKL/oneDNN kernels of a CPU without AVX-512 (default native)",
    )
    parser.add_argument("--demo-size", choices=list(DEMO_SIZES), default="reduced", help="default reduced")
    parser.add_argument("--json", help="also write every row to this JSONL file")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **ISA_ENV[args.isa]}
    ids = [test for name in args.only if name in TESTS for test in TESTS[name]]
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        if ids:
            rows += run_tests(seed, ids, env)
        if "demo" in args.only:
            rows.append(run_demo(seed, args.demo_size, env))
        print(f"seed {seed} done in {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    print(f"seed sweep, isa {args.isa}, seeds {' '.join(map(str, args.seeds))}")
    print_table(rows)
    if args.json:
        Path(args.json).write_text("".join(json.dumps({**r, "isa": args.isa}) + "\n" for r in rows))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

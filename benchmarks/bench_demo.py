"""How long `rlhf demo` takes end to end, and how much PPO improves the ground-truth score.

    .venv/bin/python benchmarks/bench_demo.py                  # full-size demo, fresh work dir
    .venv/bin/python benchmarks/bench_demo.py --steps 20       # quicker look

Prints wall time against the 10-minute budget (ratio < 1 is inside it) and the PPO policy's
ground-truth score against the SFT policy's on the same held-out prompts (the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="PPO steps (default: the demo's default)")
    parser.add_argument("--workdir", default=None, help="keep artifacts here (default: a temp dir)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rlhf-bench-demo-"))
    command = [sys.executable, "-m", "rlhf.cli", "demo", "--workdir", str(workdir), "--fresh"]
    if args.steps:
        command += ["--steps", str(args.steps)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    report = json.loads((workdir / "report.json").read_text())
    sft, ppo = report["sft"]["ground_truth"], report["ppo"]["ground_truth"]
    print(f"cpu cores: {os.cpu_count()}  work dir: {workdir}")
    print(f"demo wall time: {wall:.0f}s  (budget {BUDGET_SECONDS}s, ratio {wall / BUDGET_SECONDS:.2f})")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:<9} {seconds:6.0f}s")
    print(f"ground-truth score: SFT {sft:.3f} -> PPO {ppo:.3f}  (+{ppo - sft:.3f})")
    print(f"reward-model score: SFT {report['sft']['reward']:.3f} -> PPO {report['ppo']['reward']:.3f}")
    print(f"reward-model accuracy vs hidden rule: {report['reward_model_accuracy']:.1%}")
    print(f"final KL to the reference: {report['final_kl']}")


if __name__ == "__main__":
    main()

"""The live line while PPO runs: step progress with reward, ground-truth score and KL."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tqdm import tqdm

from rlhf.demo.plot import read_metrics
from rlhf.toy.synthetic import ground_truth_score


def ground_truth_by_step(rollouts: Path) -> dict[int, float]:
    """Mean hidden-rule score of each step's sampled responses, from the learner's rollouts.jsonl."""
    totals: dict[int, list[float]] = {}
    if not rollouts.exists():
        return {}
    for line in rollouts.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the learner may be mid-write
            continue
        totals.setdefault(int(row["step"]), []).append(ground_truth_score(row["prompt"], row["response"]))
    return {step: sum(v) / len(v) for step, v in totals.items()}


def add_ground_truth(ppo_dir: Path) -> list[dict]:
    """metrics.jsonl rows, each with objective/ground_truth added where rollouts are logged."""
    truth = ground_truth_by_step(ppo_dir / "rollouts.jsonl")
    rows = read_metrics(ppo_dir / "metrics.jsonl")
    for row in rows:
        if row["step"] in truth:
            row["objective/ground_truth"] = truth[row["step"]]
    return rows


def follow_training(proc: subprocess.Popen, ppo_dir: Path, steps: int, services: dict) -> int:
    """Show progress until the learner exits; returns its exit code."""
    bar = tqdm(total=steps, desc="PPO", unit="step", dynamic_ncols=True)
    seen = 0
    while True:
        code = proc.poll()
        rows = add_ground_truth(ppo_dir)
        if rows and rows[-1]["step"] != seen:
            last = rows[-1]
            bar.n = min(steps, int(last["step"]))
            bar.set_postfix(
                reward=f"{last.get('objective/reward', float('nan')):.3f}",
                truth=f"{last.get('objective/ground_truth', float('nan')):.3f}",
                kl=f"{last.get('objective/kl', float('nan')):.3f}",
                refresh=False,
            )
            bar.refresh()
            seen = last["step"]
        dead = [name for name, svc in services.items() if not svc.running()]
        if dead and code is None:
            bar.write(f"service(s) exited: {', '.join(dead)}; the learner will retry, then stop with a checkpoint")
            services = {k: v for k, v in services.items() if k not in dead}
        if code is not None:
            bar.close()
            return code
        time.sleep(0.5)

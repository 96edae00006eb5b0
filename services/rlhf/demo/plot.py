"""The demo's picture: reward, ground-truth score and KL per PPO step, from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(rows: list[dict], out: Path, title: str = "PPO on the synthetic task") -> Path:
    """Two panels sharing the step axis: scores on top, KL to the reference below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (scores, kl) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, height_ratios=[2, 1])
    scores.plot(steps, [r.get("objective/reward") for r in rows], label="reward model score r(x, y)", color="tab:blue")
    if any("objective/ground_truth" in r for r in rows):
        scores.plot(
            steps, [r.get("objective/ground_truth") for r in rows], label="ground-truth score (hidden rule)",
            color="tab:green",
        )
    scores.set_ylabel("mean score per response")
    scores.legend(loc="lower right")
    scores.grid(alpha=0.3)
    kl.plot(steps, [r.get("objective/kl") for r in rows], label="KL(π_RL ‖ π_SFT) per response", color="tab:red")
    kl.set_xlabel("PPO step")
    kl.set_ylabel("KL (nats)")
    kl.legend(loc="upper left")
    kl.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

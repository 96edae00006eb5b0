"""The demo's picture: reward, ground-truth score and KL per PPO step, from metrics.jsonl.

Each per-step curve is drawn faint, with an exponential moving average over it; the legends sit
above their panels, outside the data, so no late step or early spike hides behind them.
"""

from __future__ import annotations

import json
from pathlib import Path

SMOOTHING = 0.8  # EMA weight of the past: TensorBoard's default slider is 0.6, noisier than these curves


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ema(values: list[float | None], smoothing: float = SMOOTHING) -> list[float | None]:
    """Exponential moving average, debiased at the start (as TensorBoard's): s_t = a*s_{t-1} + (1-a)*x_t,
    divided by 1 - a^t so the first points are not pulled towards 0. Gaps (None) stay gaps."""
    out, average, weight = [], 0.0, 0.0
    for x in values:
        if x is None:
            out.append(None)
            continue
        average = smoothing * average + (1 - smoothing) * x
        weight = smoothing * weight + (1 - smoothing)
        out.append(average / weight)
    return out


def _curve(ax, steps: list[int], values: list[float | None], label: str, color: str) -> None:
    ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)  # raw, per step
    ax.plot(steps, ema(values), color=color, linewidth=2, label=f"{label} (EMA)")


def plot_training(rows: list[dict], out: Path, title: str = "PPO on the synthetic task") -> Path:
    """training.png: draw_training's figure, saved."""
    import matplotlib.pyplot as plt

    fig = draw_training(rows, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def draw_training(rows: list[dict], title: str = "PPO on the synthetic task"):
    """Two panels sharing the step axis: scores on top, KL to the reference below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (scores, kl) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=[2, 1])
    _curve(scores, steps, [r.get("objective/reward") for r in rows], "reward model score r(x, y)", "tab:blue")
    if any("objective/ground_truth" in r for r in rows):
        _curve(
            scores,
            steps,
            [r.get("objective/ground_truth") for r in rows],
            "ground-truth score (hidden rule)",
            "tab:green",
        )
    scores.set_ylabel("mean score per response")
    _curve(kl, steps, [r.get("objective/kl") for r in rows], "KL(π_RL ‖ π_SFT) per response", "tab:red")
    kl.set_xlabel("PPO step")
    kl.set_ylabel("KL (nats)")
    for ax in (scores, kl):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig

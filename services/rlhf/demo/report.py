"""Evaluate SFT against PPO on held-out prompts, and write the demo's report and plot."""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlhf.demo.live import add_ground_truth
from rlhf.demo.plot import plot_training
from rlhf.toy.synthetic import as_chat, ground_truth_score, make_prompt, make_response, topic_of


def render_messages(tokenizer, messages: list[dict]) -> str:
    from rlhf.core.chat import render

    return render(tokenizer, [(m["role"], m["content"]) for m in messages], generation_prompt=True)


EVAL_SEED = 1234  # sampling seed shared by both policies, so they face the same draws


def as_messages(prompt: str) -> list[dict]:
    """A text prompt of the synthetic task as the chat form writes it (rlhf data synth --chat)."""
    return as_chat({"prompt": prompt})["prompt"]


def reward_model_accuracy(reward, n_pairs: int = 400, seed: int = 99, chat: bool = False) -> float:
    """Agreement of the reward model with the hidden rule on fresh pairs (never seen in training)."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n_pairs:
        prompt = make_prompt(rng)
        a, b = (make_response(rng, topic_of(prompt), on_topic=0.5) for _ in range(2))
        if ground_truth_score(prompt, a) != ground_truth_score(prompt, b):
            pairs.append((prompt, a, b))
    scores = reward.score([(as_messages(p) if chat else p, r) for p, a, b in pairs for r in (a, b)])
    agree = sum(
        (scores[2 * i] > scores[2 * i + 1]) == (ground_truth_score(p, a) > ground_truth_score(p, b))
        for i, (p, a, b) in enumerate(pairs)
    )
    return agree / n_pairs


def score_policy(model_dir: Path, prompts: list[str], reward, device: str) -> dict:
    from rlhf.core.types import GenerationParams
    from rlhf.policy.local import LocalPolicy

    policy = LocalPolicy(str(model_dir), device=device)
    texts = [p if isinstance(p, str) else render_messages(policy.policy.tokenizer, p) for p in prompts]
    samples = policy.generate(texts, GenerationParams(max_new_tokens=32, temperature=1.0, seed=EVAL_SEED))
    responses = [s.response_text for s in samples]
    rewards = reward.score(list(zip(prompts, responses, strict=True)))  # a conversation: the RM renders it
    truth = [ground_truth_score(p, r) for p, r in zip(texts, responses, strict=True)]
    return {
        "ground_truth": sum(truth) / len(truth),
        "reward": sum(rewards) / len(rewards),
        "samples": [{"prompt": p, "response": r} for p, r in zip(texts[:3], responses[:3], strict=True)],
    }


def evaluate(config) -> dict:
    from rlhf.reward.local import LocalReward

    p = config.paths
    prompts = [json.loads(line)["prompt"] for line in (p["data"] / "prompts_eval.jsonl").read_text().splitlines()]
    prompts = prompts[: config.eval_prompts]
    reward = LocalReward(str(p["rm"]), device=config.device)
    results = {
        "reward_model_accuracy": reward_model_accuracy(reward, chat=config.chat),
        "sft": score_policy(p["sft"], prompts, reward, config.device),
        "ppo": score_policy(p["ppo"] / "policy", prompts, reward, config.device),
        "eval_prompts": len(prompts),
    }
    _write_json(config.workdir / "evaluation.json", results)
    return results


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def write_report(config, results: dict | None) -> dict:
    """Print the short report, and write report.json and training.png into the work dir."""
    from rich.console import Console
    from rich.table import Table

    workdir = config.workdir
    results = results or json.loads((workdir / "evaluation.json").read_text())
    rows = add_ground_truth(config.paths["ppo"])
    final_kl = rows[-1].get("objective/kl") if rows else None
    plot = plot_training(rows, workdir / "training.png") if rows else None
    report = {
        **results,
        "final_kl": final_kl,
        "ppo_steps": rows[-1]["step"] if rows else 0,
        "stage_seconds": config.timings,
        "total_seconds": sum(config.timings.values()),
        "plot": str(plot) if plot else None,
        "metrics": str(config.paths["ppo"] / "metrics.jsonl"),
        "tensorboard": str(config.paths["ppo"] / "tb"),
    }
    _write_json(workdir / "report.json", report)

    console = Console()
    table = Table(title=f"SFT vs PPO on {results['eval_prompts']} held-out prompts")
    table.add_column("")
    table.add_column("SFT policy", justify="right")
    table.add_column("PPO policy", justify="right")
    sft, ppo = results["sft"], results["ppo"]
    table.add_row("ground-truth score", f"{sft['ground_truth']:.3f}", f"{ppo['ground_truth']:.3f}")
    table.add_row("reward-model score", f"{sft['reward']:.3f}", f"{ppo['reward']:.3f}")
    console.print(table)
    console.print(f"reward-model accuracy against the hidden rule: {results['reward_model_accuracy']:.1%}")
    if final_kl is not None:
        console.print(f"final KL to the reference policy: {final_kl:.3f} nats per response")
    console.print(
        "wall time per stage: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in config.timings.items())
        + f" (total {report['total_seconds']:.0f}s)"
    )
    for before, after in zip(sft["samples"], ppo["samples"], strict=True):
        console.print(f"[bold]{before['prompt']!r}[/bold]")
        console.print(f"  before: {before['response']!r}\n  after:  {after['response']!r}")
    console.print(f"plot: {plot}   metrics: {report['metrics']}   tensorboard: {report['tensorboard']}")
    return report

"""Seconds per PPO step, by phase: the services as separate processes vs all four models in one process.

    .venv/bin/python benchmarks/bench_ppo_step.py                        # tiny model, 2 policy replicas
    .venv/bin/python benchmarks/bench_ppo_step.py --model-size small --steps 12 --replicas 1

Both runs use the same loop (`rlhf.learner.loop.train`), models, prompts and seeds; only the
services differ: `rlhf serve policy|reward|reference` processes reached over gRPC on loopback, or
`LocalPolicy`/`LocalReward`/`LocalReference` in the learner's own process. The first steps are
warm-up and not counted. Target: the split costs at most 1.10x the single process per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

TARGET = 1.10
PHASES = [
    "time/generate",
    "time/score",
    "time/reference",
    "time/logprobs",
    "time/update",
    "time/weight_sync",
    "time/step",
]
SIZES = {"tiny": (2, 128, 4), "small": (4, 256, 8)}  # layers, hidden, heads


def prepare(workdir: Path, size: str) -> tuple[Path, Path]:
    """A base model (serving as SFT, reference, reward and critic init) and the synthetic task."""
    layers, hidden, heads = SIZES[size]
    model, data = workdir / "model", workdir / "data"
    rlhf = [sys.executable, "-m", "rlhf.cli", "--log-level", "WARNING"]
    subprocess.run(
        [
            *rlhf,
            "tiny-model",
            "--out",
            str(model),
            "--layers",
            str(layers),
            "--hidden",
            str(hidden),
            "--heads",
            str(heads),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run([*rlhf, "data", "synth", "--out", str(data)], check=True, stdout=subprocess.DEVNULL)
    return model, data


def run(config, services) -> list[dict]:
    from rlhf.learner.loop import train

    train(config, services)
    return [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]


def start_services(stack: ExitStack, model: Path, replicas: int, logs: Path, threads: int):
    """(services as separate processes behind gRPC clients, the same services in this process)."""
    from rlhf.learner.replicas import Services
    from rlhf.policy.client import PolicyClient
    from rlhf.policy.local import LocalPolicy
    from rlhf.reference.client import ReferenceClient
    from rlhf.reference.local import LocalReference
    from rlhf.reward.client import RewardClient
    from rlhf.reward.local import LocalReward
    from rlhf.toy.processes import ServiceProcess

    def serve(name: str, index: int = 0) -> str:
        proc = ServiceProcess(
            ["serve", name, "--model", str(model), "--device", "cpu"],
            log_path=logs / f"{name}{index}.log",
            name=name,
            env={"OMP_NUM_THREADS": str(threads)},
        )
        return stack.enter_context(proc).target

    policies = [serve("policy", i) for i in range(replicas)]
    reward, reference = serve("reward"), serve("reference")
    split = Services(
        [stack.enter_context(PolicyClient(t, timeout=600)) for t in policies],
        stack.enter_context(RewardClient(reward, timeout=600)),
        stack.enter_context(ReferenceClient(reference, timeout=600)),
    )
    local_policies = [LocalPolicy(model, device="cpu") for _ in range(replicas)]
    single = Services(local_policies, LocalReward(str(model), device="cpu"), LocalReference(model, device="cpu"))
    return split, single


def phase_medians(rows: list[dict], warmup: int) -> dict[str, float]:
    counted = rows[warmup:]
    return {phase: statistics.median(r[phase] for r in counted) for phase in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="PPO steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps not counted")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=2, help="policy replicas (in both runs)")
    parser.add_argument(
        "--service-threads",
        type=int,
        default=1,
        help="torch threads per service process (default 1: the services share this machine's "
        "cores with each other and the learner, as they would not on separate machines)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each set-up")
    parser.add_argument("--workdir", default=None, help="keep artifacts here (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RLHF_LOG_FORMAT", "text")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from rlhf.learner.config import PPOConfig

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rlhf-bench-ppo-"))
    model, data = prepare(workdir, args.model_size)

    def config(name: str) -> PPOConfig:
        return PPOConfig(
            model=str(model),
            policy="bench",
            reward="bench",
            reference="bench",
            prompts=str(data / "prompts.jsonl"),
            out=str(workdir / name),
            steps=args.steps,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            ptx_data=str(data / "pretrain.jsonl"),
            save_every=10**6,
            lr=1e-4,
            device="cpu",
        )

    (workdir / "logs").mkdir(exist_ok=True)
    start = time.perf_counter()
    # Other work on the machine skews single runs, so the two set-ups alternate, and each phase
    # keeps its best (lowest) per-run median; the fastest single step is shown as well.
    results: dict[str, list[dict[str, float]]] = {"single": [], "split": []}
    fastest: dict[str, float] = {}
    with ExitStack() as stack:
        both = start_services(stack, model, args.replicas, workdir / "logs", args.service_threads)
        services = dict(zip(("split", "single"), both, strict=True))
        for rep in range(args.repeats):
            for name in ("single", "split"):
                rows = run(config(f"{name}-{rep}"), services[name])
                results[name].append(phase_medians(rows, args.warmup))
                best = min(r["time/step"] for r in rows[args.warmup :])
                fastest[name] = min(fastest.get(name, best), best)
    single, split = ({phase: min(r[phase] for r in results[name]) for phase in PHASES} for name in ("single", "split"))
    print(
        f"PPO step, {args.model_size} model, batch {args.batch_size}, {args.max_new_tokens} new tokens, "
        f"{args.replicas} policy replica(s), {os.cpu_count()} CPU cores, {args.service_threads} torch thread(s) "
        f"per service process; best of {args.repeats} "
        f"runs, median of steps {args.warmup + 1}-{args.steps}"
    )
    print(f"(bench took {time.perf_counter() - start:.0f}s; work dir {workdir})")
    print(f"{'phase':<18} {'one process':>12} {'services':>12} {'ratio':>7}")
    for phase in PHASES:
        ratio = split[phase] / single[phase] if single[phase] > 0 else float("nan")
        print(f"{phase:<18} {single[phase]:>11.3f}s {split[phase]:>11.3f}s {ratio:>6.2f}x")
    print(
        f"{'fastest step':<18} {fastest['single']:>11.3f}s {fastest['split']:>11.3f}s "
        f"{fastest['split'] / fastest['single']:>6.2f}x"
    )
    ratio = split["time/step"] / single["time/step"]
    verdict = "within" if ratio <= TARGET else "over"
    print(f"services / one process per step: {ratio:.2f}x ({verdict} the {TARGET:.2f}x target)")


if __name__ == "__main__":
    main()

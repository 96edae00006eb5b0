"""`rlhf demo`: the whole pipeline locally on the tiny bundled model."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path


def register(commands) -> None:
    demo = commands.top.add_parser(
        "demo", help="run SFT, reward model and PPO end to end on the tiny model, services as local processes"
    )
    demo.add_argument("--workdir", default="demo-run", help="keeps every artifact; a rerun reuses finished stages")
    demo.add_argument("--fresh", action="store_true", help="redo every stage")
    demo.add_argument("--steps", type=int, default=60, help="PPO steps")
    demo.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    demo.add_argument("--model-size", default="tiny", choices=["tiny", "small"], help="size of the bundled model")
    demo.add_argument("--data-scale", type=float, default=1.0, help="shrink or grow the synthetic data")
    demo.add_argument("--ppo-batch-size", type=int, default=32, help="prompts per PPO step")
    demo.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts for the final comparison")
    demo.add_argument("--seed", type=int, default=0, help="seed of the model, data and every training stage")
    demo.add_argument("--kl-coef", type=float, default=0.3, help="beta: PPO's per-token KL penalty weight")
    demo.add_argument("--min-new-tokens", type=int, default=4, help="PPO samples: no EOS before this many tokens")
    demo.set_defaults(func=_demo)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: every service and the learner get stopped


def _demo(args: argparse.Namespace) -> int:
    from rlhf.demo.pipeline import DemoConfig, run_demo

    signal.signal(signal.SIGTERM, _terminated)
    config = DemoConfig(
        workdir=Path(args.workdir),
        steps=args.steps,
        fresh=args.fresh,
        device=args.device,
        model_size=args.model_size,
        data_scale=args.data_scale,
        seed=args.seed,
        ppo_batch_size=args.ppo_batch_size,
        eval_prompts=args.eval_prompts,
        kl_coef=args.kl_coef,
        min_new_tokens=args.min_new_tokens,
    )
    run_demo(config)
    return 0

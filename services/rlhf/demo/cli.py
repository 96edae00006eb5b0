"""`rlhf demo`: the whole pipeline locally on the tiny bundled model."""

from __future__ import annotations

import argparse
import signal

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.demo.pipeline import DemoConfig


def register(commands) -> None:
    demo = commands.top.add_parser(
        "demo", help="run SFT, reward model and PPO end to end on the tiny model, services as local processes"
    )
    add_config_arguments(demo, DemoConfig)
    demo.set_defaults(func=_demo)


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: every service and the learner get stopped


def _demo(args: argparse.Namespace) -> int:
    from rlhf.demo.pipeline import run_demo

    signal.signal(signal.SIGTERM, _terminated)
    config = config_from_args(args, DemoConfig)
    run_demo(config)
    return 0

"""The toy world's commands: `rlhf tiny-model` and `rlhf data synth`."""

from __future__ import annotations

import argparse

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.toy.config import TinyModelConfig


def register(commands) -> None:
    tiny = commands.top.add_parser("tiny-model", help="write the small default model (offline, CPU-friendly)")
    tiny.add_argument("--out", required=True, help="model directory to write")
    add_config_arguments(tiny, TinyModelConfig)
    tiny.set_defaults(func=_tiny_model)

    data = commands.top.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the bundled synthetic task (SFT, preferences, prompts, pretraining)")
    synth.add_argument("--out", required=True, help="directory for the JSONL files")
    synth.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    synth.add_argument("--scale", type=float, default=1.0, help="multiply every file's size (e.g. 0.1 for tests)")
    synth.add_argument(
        "--preference-scale",
        type=float,
        default=1.0,
        help="multiply the preference file's size once more: from about 3x, the tiny reward model "
        "learns the task's topic relation on every seed",
    )
    synth.add_argument("--chat", action="store_true", help="write the rows as conversations (lists of messages)")
    synth.set_defaults(func=_synth)


def _tiny_model(args: argparse.Namespace) -> int:
    from rlhf.core.errors import UserError
    from rlhf.core.modeling import parameter_count
    from rlhf.toy.tiny import make_tiny_model

    config = config_from_args(args, TinyModelConfig)
    if config.n_embd % config.n_head:
        raise UserError(f"--hidden {config.n_embd} must be divisible by --heads {config.n_head}")
    out = make_tiny_model(args.out, config)
    from transformers import AutoModelForCausalLM

    params = parameter_count(AutoModelForCausalLM.from_pretrained(out))
    print(f"wrote {out} ({params / 1e6:.2f}M parameters)")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from rlhf.toy.synthetic import write_task

    for name, path in write_task(
        args.out, seed=args.seed, scale=args.scale, preference_scale=args.preference_scale, chat=args.chat
    ).items():
        lines = sum(1 for _ in path.open())
        print(f"{name:>13}: {path} ({lines} rows)")
    return 0

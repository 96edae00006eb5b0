"""The toy world's commands: `rlhf tiny-model` and `rlhf data synth`."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    tiny = commands.top.add_parser("tiny-model", help="write the small default model (offline, CPU-friendly)")
    tiny.add_argument("--out", required=True, help="model directory to write")
    tiny.add_argument("--seed", type=int, default=0, help="initialisation and tokenizer seed")
    tiny.add_argument("--layers", type=int, default=2, help="transformer blocks")
    tiny.add_argument("--hidden", type=int, default=128, help="embedding width")
    tiny.add_argument("--heads", type=int, default=4, help="attention heads")
    tiny.add_argument("--context", type=int, default=256, help="context length in tokens")
    tiny.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    tiny.add_argument(
        "--layout", choices=["gpt2", "llama"], default="gpt2", help="architecture (llama: <|im_end|> ends a turn)"
    )
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
    synth.set_defaults(func=_synth)


def _tiny_model(args: argparse.Namespace) -> int:
    from rlhf.core.errors import UserError
    from rlhf.core.modeling import parameter_count
    from rlhf.toy.tiny import TinyModelConfig, make_tiny_model

    if args.hidden % args.heads:
        raise UserError(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    config = TinyModelConfig(
        vocab_size=args.vocab_size,
        n_layer=args.layers,
        n_embd=args.hidden,
        n_head=args.heads,
        n_positions=args.context,
        seed=args.seed,
        layout=args.layout,
    )
    out = make_tiny_model(args.out, config)
    from transformers import AutoModelForCausalLM

    params = parameter_count(AutoModelForCausalLM.from_pretrained(out))
    print(f"wrote {out} ({params / 1e6:.2f}M parameters)")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from rlhf.toy.synthetic import write_task

    for name, path in write_task(
        args.out, seed=args.seed, scale=args.scale, preference_scale=args.preference_scale
    ).items():
        lines = sum(1 for _ in path.open())
        print(f"{name:>13}: {path} ({lines} rows)")
    return 0

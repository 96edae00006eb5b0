"""The `rlhf` command line: one entry point, with subcommands registered by each package.

    rlhf tiny-model --out models/tiny
    rlhf data synth --out data
    rlhf train sft|rm|ppo ...
    rlhf serve reward|policy|reference ...
    rlhf label --prompts FILE --out rankings.jsonl ...

Each package contributes its commands through a module with `register(commands)`;
heavy imports (torch, transformers) happen inside the handlers so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from dataclasses import dataclass

from rlhf.core.errors import UserError

# Packages that contribute commands, in --help order.
COMMAND_MODULES = [
    "rlhf.toy.cli",
    "rlhf.label.cli",
    "rlhf.training.cli",
    "rlhf.reward.cli",
    "rlhf.policy.cli",
    "rlhf.reference.cli",
    "rlhf.learner.cli",
    "rlhf.k8s.cli",
    "rlhf.demo.cli",
]


@dataclass
class Commands:
    """Where a package hangs its subcommands: top level, `rlhf train X` or `rlhf serve X`."""

    top: argparse._SubParsersAction
    train: argparse._SubParsersAction
    serve: argparse._SubParsersAction


class DefaultsShownFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already names one; options that are
    off or unset by default (False, None) have nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or action.required or "default" in text or unset:
            return text
        shown = ("on" if action.default else "off") if isinstance(action.default, bool) else "%(default)s"
        return f"{text} (default {shown})".lstrip()


def every_parser(parser: argparse.ArgumentParser):
    """The parser and each of its subcommands' parsers, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from every_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF as gRPC services: SFT, reward model, PPO.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = top.add_parser("train", help="train a stage: sft, rm or ppo").add_subparsers(
        dest="stage", metavar="STAGE", required=True
    )
    serve = top.add_parser("serve", help="serve a model over gRPC: reward, policy or reference").add_subparsers(
        dest="service", metavar="SERVICE", required=True
    )
    commands = Commands(top=top, train=train, serve=serve)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    for each in every_parser(parser):
        each.formatter_class = DefaultsShownFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    # No Hugging Face progress bars ("Loading weights", "Writing model shards"): they interleave with the
    # services' log lines. Training stages keep their own bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    from rlhf.core.logs import configure_logging

    configure_logging(args.log_level)
    try:
        from rlhf.core.launch import launch, wants_launch

        if wants_launch(args):  # --nproc-per-node/--nnodes above 1: torchrun runs this command on every rank
            return launch(args, sys.argv[1:] if argv is None else argv)
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"rlhf: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - last resort: one line, details only at DEBUG
        logging.getLogger("rlhf").debug("unhandled error", exc_info=True)
        print(f"rlhf: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Labelling commands: `rlhf label`, `rlhf label stats FILE` and `rlhf data import --from TOOL EXPORT`."""

from __future__ import annotations

import argparse

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.label.config import ImportConfig, LabelConfig


def register(commands) -> None:
    label = commands.top.add_parser(
        "label", help="rank K responses per prompt in a browser; `rlhf label stats FILE` for agreement"
    )
    add_config_arguments(label, LabelConfig)
    label.set_defaults(func=_label)
    stats = label.add_subparsers(dest="label_command", metavar="stats").add_parser(
        "stats", help="counts, time per item and agreement between annotators (pairwise, Kendall's tau-b)"
    )
    stats.add_argument("rankings", help="rankings JSONL (from `rlhf label` or `rlhf data import`)")
    stats.set_defaults(func=_stats)

    from rlhf.label.imports import IMPORTERS

    importer = _subcommands(commands.top.choices["data"]).add_parser(
        "import", help="rankings from Label Studio or Argilla as K-wise rankings JSONL"
    )
    importer.add_argument("export", help="the tool's export (JSON or JSON lines)")
    importer.add_argument("--from", dest="source", required=True, choices=sorted(IMPORTERS), help="the tool")
    add_config_arguments(importer, ImportConfig)
    importer.set_defaults(func=_import)


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Where `parser` (e.g. `rlhf data`) keeps its subcommands."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _label(args: argparse.Namespace) -> int:
    from rlhf.label.serve import run

    return run(config_from_args(args, LabelConfig))


def _stats(args: argparse.Namespace) -> int:
    from rlhf.label.stats import format_stats, label_stats

    print(format_stats(label_stats(args.rankings)))
    return 0


def _import(args: argparse.Namespace) -> int:
    from rlhf.core.errors import UserError
    from rlhf.label.imports import import_rankings

    config = config_from_args(args, ImportConfig)
    if not config.out:
        raise UserError("give --out FILE (the rankings JSONL to write)")
    count = import_rankings(args.source, args.export, config.out, config.prompt_field)
    print(f"wrote {count} rankings to {config.out}")
    return 0

"""Every `rlhf` command's flags as data: {prog: {flag: {"default", "choices", "required"}}}."""

from __future__ import annotations

import argparse
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "data" / "cli_help.json"


def _plain(value):
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


def cli_flags() -> dict[str, dict[str, dict]]:
    from rlhf.cli import build_parser, every_parser

    commands = {}
    for parser in every_parser(build_parser()):
        flags = {}
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            default = None if action.default == argparse.SUPPRESS else action.default
            flags[max(action.option_strings, key=len)] = {
                "default": _plain(default),
                "choices": _plain(list(action.choices)) if action.choices else None,
                "required": bool(action.required),
            }
        commands[parser.prog] = flags
    return commands

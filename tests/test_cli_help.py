"""`--help` and the CLI reference (docs/cli.md) agree: every option shows its default, and every flag the
reference's table names exists on that command."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rlhf.cli import build_parser, every_parser
from tests.helpers import hang_guard

CLI_REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def subcommand(path: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def options_with_defaults(parser: argparse.ArgumentParser):
    for action in parser._actions:
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not action.required and not unset:
            yield action


def test_every_option_with_a_default_shows_it_in_help():
    missing = []
    for parser in every_parser(build_parser()):
        formatter = parser._get_formatter()
        for action in options_with_defaults(parser):
            if "default" not in (formatter._expand_help(action) if action.help else ""):
                missing.append(f"{parser.prog} {', '.join(action.option_strings)}")
    assert not missing, missing


def reference_cli_rows() -> list[tuple[list[str], set[str]]]:
    """(command words, flags) for each row of the CLI reference's table (docs/cli.md)."""
    text = CLI_REFERENCE.read_text(encoding="utf-8")
    table = text[text.index("| command | what it does |") :]
    table = table[: table.index("\n\n")]
    rows = []
    for line in table.splitlines()[2:]:
        first, second = (cell.strip() for cell in line.strip("|").split(" | ", 1))
        for code in re.findall(r"`(rlhf [^`]*)`", first):
            words = re.match(r"rlhf ((?:[a-z0-9-]+(?:\\\|[a-z0-9-]+)* ?)+)", code).group(1).split()
            flags = set(re.findall(r"--[a-z][a-z0-9-]*", code)) | set(re.findall(r"`(--[a-z][a-z0-9-]*)", second))
            for expanded in expand(words):
                rows.append((expanded, flags))
    return rows


def expand(words: list[str]) -> list[list[str]]:
    """`serve reward\\|policy` -> [[serve, reward], [serve, policy]]."""
    paths = [[]]
    for word in words:
        paths = [[*p, alt] for p in paths for alt in word.split("\\|")]
    return paths


def test_every_flag_in_the_cli_reference_table_exists_on_its_command():
    rows = reference_cli_rows()
    assert len(rows) >= 15
    wrong = []
    for words, flags in rows:
        parser = subcommand(words[:2] if words[0] in {"train", "serve", "learner", "data", "k8s"} else words[:1])
        for flag in flags:
            if flag not in parser._option_string_actions:
                wrong.append(f"rlhf {' '.join(words)} {flag}")
    assert not wrong, wrong


def test_building_the_cli_imports_no_torch():
    """`rlhf --help` stays fast: the flag definitions (configs, memory options) import no torch."""
    import subprocess
    import sys

    probe = "import sys; from rlhf.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=hang_guard(600))
    assert done.stdout.strip() == "False", done.stderr[-2000:]

"""The flag tables in docs/ agree with the configs the flags come from: every flag a table names exists on its
commands, the default it states is the flag's (parsed from `--help`'s source, the config fields), and the
environment variable it names is the one the field reads.

A default cell holds one value per flag of its row (or one for all of them): `required`, `off`, `on`, a number or a
word; `(... for `train grpo`)` states `rlhf train grpo`'s. A cell with spaces, or a `--flag`, describes a default
that the field leaves unset (None or empty): the docs say what happens then."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from rlhf.cli import build_parser, every_parser

DOCS = Path(__file__).resolve().parents[1] / "docs"
STAGES = ["rlhf train sft", "rlhf train rm", "rlhf train dpo", "rlhf train ppo"]
SERVERS = ["rlhf serve policy", "rlhf serve reward", "rlhf serve reference"]
CLIENTS = ["rlhf generate", "rlhf score", "rlhf logprobs", "rlhf learner status"]
# The commands each page's flag tables describe.
DEFAULT_TABLES = {"learner.md": ["rlhf train ppo"], "large-models.md": STAGES}
ENV_TABLES = {"security.md"}
WHERE = {  # the "on" column of security.md
    "servers": SERVERS,
    "clients": CLIENTS,
    "`rlhf train ppo`": ["rlhf train ppo"],
    "`rlhf serve policy`": ["rlhf serve policy"],
}


@pytest.fixture(scope="module")
def actions() -> dict[str, dict[str, argparse.Action]]:
    """{prog: {--flag: action}}, built without any RLHF_* variable set (their values would be the defaults)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("RLHF_")]:
            mp.delenv(name)
        parsers = list(every_parser(build_parser()))
    return {p.prog: dict(p._option_string_actions) for p in parsers}


def tables(page: str) -> list[list[list[str]]]:
    """Each table of the page whose header starts with `flag`, as rows of cells (header and rule dropped)."""
    found, rows = [], None
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines() + [""]:
        if line.startswith("| flag |"):
            rows = []
        elif rows is not None and line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
        elif rows is not None:
            found.append(rows)
            rows = None
    return found


def row_flags(cell: str) -> list[str]:
    """The flags a row names, a `--x` / `--no-x` pair counting once."""
    names = re.findall(r"`(--[a-z0-9-]+)", cell)
    return [n for n in names if not (n.startswith("--no-") and "--" + n[5:] in names)]


def split_values(cell: str, count: int) -> list[str]:
    values = [v.strip() for v in cell.split(", ")] if cell.count(", ") == count - 1 else [cell.strip()]
    return values * count if len(values) == 1 else values


def default_cells(cell: str) -> dict[str, str]:
    """{"": the stated default, "rlhf train grpo": grpo's where the cell names it}."""
    grpo = re.search(r"\(([^()]*?) for `train grpo`", cell)
    plain = re.sub(r"\s*\(.*\)", "", cell).strip()
    return {"": plain, **({"rlhf train grpo": grpo.group(1)} if grpo else {})}


def states(text: str, action: argparse.Action) -> bool:
    """Whether the docs' `text` is the default of `action`."""
    default = action.default
    if text == "required":
        return action.required
    if text == "off":
        return default in (None, False)
    if text == "on":
        return default is True
    if " " in text or text.startswith("`"):  # a described default: the field leaves it unset
        return default in (None, "") and not action.required
    if isinstance(default, bool) or default is None:
        return False
    if isinstance(default, int | float):
        try:
            return float(text) == float(default)
        except ValueError:
            return False
    return text == str(default)


@pytest.mark.parametrize("page", sorted(DEFAULT_TABLES))
def test_every_default_in_a_flag_table_is_the_flags(page, actions):
    checked, wrong = 0, []
    for table in tables(page):
        for cells in table:
            flags = row_flags(cells[0])
            for prog_of, cell in default_cells(cells[1]).items():
                for flag, text in zip(flags, split_values(cell, len(flags)), strict=True):
                    for prog in [prog_of] if prog_of else DEFAULT_TABLES[page]:
                        action = actions[prog].get(flag)
                        if action is None or not states(text, action):
                            shown = "no such flag" if action is None else f"default {action.default!r}"
                            wrong.append(f"{page}: {prog} {flag}: the docs say {text!r}, the CLI has {shown}")
                        checked += 1
    assert checked >= 20 if page == "learner.md" else checked >= 7
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", sorted(ENV_TABLES))
def test_every_environment_default_in_a_flag_table_is_the_fields(page, actions):
    checked, wrong = 0, []
    for table in tables(page):
        for cells in table:
            flags, envs = row_flags(cells[0]), re.findall(r"`(RLHF_[A-Z_]+)`", cells[2])
            progs = [p for where, ps in WHERE.items() if where in cells[1] for p in ps]
            assert progs, f"{page}: who takes {cells[0]}? ({cells[1]!r})"
            for flag, env in zip(flags, split_values(", ".join(envs) or "-", len(flags)), strict=True):
                for prog in progs:
                    action = actions[prog].get(flag)
                    named = re.search(r"\(env (RLHF_[A-Z_]+)\)", action.help or "") if action else None
                    has = named.group(1) if named else "-"
                    if action is None or has != env:
                        wrong.append(f"{page}: {prog} {flag}: the docs say env {env}, the CLI has {has}")
                    checked += 1
    assert checked >= 20
    assert not wrong, "\n".join(wrong)

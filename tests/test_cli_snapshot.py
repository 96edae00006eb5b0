"""`--help` lists the same flags with the same defaults as the saved snapshot (tests/data/cli_help.json,
written by scripts/snapshot_cli_help.py): refactors of where a setting is defined must not change the CLI.
New commands and flags may be added; a deliberate change of an existing one reruns the script."""

from __future__ import annotations

import json

from tests.cli_snapshot import SNAPSHOT, cli_flags


def test_every_saved_flag_keeps_its_default_choices_and_requiredness():
    saved, now = json.loads(SNAPSHOT.read_text(encoding="utf-8")), cli_flags()
    missing_commands = sorted(set(saved) - set(now))
    assert not missing_commands, missing_commands
    changed = []
    for prog, flags in saved.items():
        for flag, spec in flags.items():
            if now[prog].get(flag) != spec:
                changed.append(f"{prog} {flag}: saved {spec}, now {now[prog].get(flag)}")
    assert not changed, "\n".join(changed)

"""Write tests/data/cli_help.json: every `rlhf` command's flags with their defaults, choices and
required-ness. tests/test_cli_snapshot.py compares `--help` against it, so a refactor that drops a flag or
moves a default fails. Rerun this only for a deliberate change of the CLI, and say so in the commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cli_snapshot import SNAPSHOT, cli_flags  # noqa: E402

if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(cli_flags(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")

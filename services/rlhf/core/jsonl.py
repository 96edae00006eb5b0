"""Reading JSONL data files, with errors that name the file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rlhf.core.errors import UserError


def read_jsonl(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """(where, object) for every non-blank line; `where` is "path:line", for the caller's own errors."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: each line must be a JSON object")
        rows.append((f"{path}:{number}", row))
    return rows


def check_input_file(path: str | os.PathLike, field: str, flag: str) -> int:
    """Fail now, with one line, if a JSONL input cannot be read or has no row with `field`: before any
    model loads, not minutes later. Returns the number of such rows."""
    count = sum(field in row for _, row in read_jsonl(path))
    if count == 0:
        raise UserError(f"{flag} {path}: no line with a {field!r} field")
    return count

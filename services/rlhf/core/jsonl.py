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


def read_jsonl_field(path: str | os.PathLike, field: str) -> list[str]:
    """The `field` string of every line of a JSONL file; a line without one is a one-line error."""
    values = []
    for where, row in read_jsonl(path):
        if not isinstance(row.get(field), str):
            raise UserError(f'{where}: expected a string "{field}" field')
        values.append(row[field])
    if not values:
        raise UserError(f"{path} holds no {field}s")
    return values

"""Reading JSONL data files, with errors that name the file and line.

A file whose writer crashed mid-line ends in a torn line: no newline, not valid JSON. Readers skip
it with a warning (the lines before it are whole); anything else that does not parse is an error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rlhf.core.errors import UserError

log = logging.getLogger(__name__)


def torn_tail(path: str | os.PathLike) -> int:
    """Bytes of a torn last line (unterminated and not valid JSON) at the end of `path`; 0 when there is none."""
    return _torn_tail_bytes(Path(path).read_bytes())


def _torn_tail_bytes(data: bytes) -> int:
    tail = data[data.rfind(b"\n") + 1 :]
    if not tail.strip():
        return 0
    try:
        json.loads(tail.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return len(tail)
    return 0


def read_jsonl(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """(where, object) for every non-blank line; `where` is "path:line", for the caller's own errors."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    if torn := _torn_tail_bytes(data):
        data = data[:-torn]
        line = data.count(b"\n") + 1
        log.warning("%s:%d: skipped a torn last line (%d bytes, an interrupted write)", path, line, torn)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start})") from None
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

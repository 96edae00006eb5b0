"""The rankings file: append-only JSONL, each line on disk (fsync) before the page is told it is saved.

One line per (item, annotator), the idempotency key: a second submit of the same ranking (a double
click, a retried request) is answered "already stored" and written nowhere. A crash mid-write can
leave a torn last line; readers skip and report it (rlhf.core.jsonl), and the store cuts it off
before it appends, so the file never holds a torn line in the middle.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from pathlib import Path

from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl, torn_tail

log = logging.getLogger(__name__)


class RankingStore:
    """The rankings in `path`, and appends to it; safe to share between request threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: set[tuple[str, str]] = set()
        self.count_by_item: Counter[str] = Counter()
        self.first_row_of_item: dict[str, dict] = {}  # the responses an item was ranked with (reused on restart)
        if self.path.exists():
            self._cut_torn_tail()
            for where, row in read_jsonl(self.path):
                if not isinstance(row.get("item"), str) or not isinstance(row.get("annotator"), str):
                    raise UserError(f"{where}: not a line `rlhf label` wrote (needs string 'item' and 'annotator')")
                self._remember(row)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.touch()
            except OSError as err:
                raise UserError(f"cannot create {self.path}: {err.strerror}") from err
            _fsync_dir(self.path.parent)

    def has(self, item: str, annotator: str) -> bool:
        return (item, annotator) in self._keys

    def append(self, row: dict) -> bool:
        """Write `row` as one line and fsync it; False (nothing written) when its (item, annotator) is stored."""
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            if (row["item"], row["annotator"]) in self._keys:
                return False
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._remember(row)
        return True

    def _remember(self, row: dict) -> None:
        self._keys.add((row["item"], row["annotator"]))
        self.count_by_item[row["item"]] += 1
        self.first_row_of_item.setdefault(row["item"], row)

    def _cut_torn_tail(self) -> None:
        """Truncate a torn last line (it was never acknowledged) and end the file on a newline, so that
        the next append starts a line of its own."""
        torn = torn_tail(self.path)
        with self.path.open("r+b") as f:
            if torn:
                f.truncate(f.seek(0, os.SEEK_END) - torn)
                log.warning("%s: cut a torn last line (%d bytes, an interrupted write)", self.path, torn)
            end = f.seek(0, os.SEEK_END)
            if end and (f.seek(end - 1), f.read(1))[1] != b"\n":
                f.write(b"\n")
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

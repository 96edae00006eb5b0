"""The rankings file survives a crash mid-write: readers skip the torn last line and say so, the store cuts
it off before appending, and a second submit of the same (item, annotator) is written nowhere."""

from __future__ import annotations

import json
import logging

import pytest

from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl
from rlhf.label.store import RankingStore
from rlhf.training.preferences import load_rankings


def line(item: str, annotator: str = "ana") -> str:
    row = {"prompt": f"p{item}", "responses": ["a", "b"], "ranking": [1, 0], "item": item, "annotator": annotator}
    return json.dumps(row) + "\n"


@pytest.fixture
def torn(tmp_path):
    """Two whole lines, then a third cut off mid-write (as a crash leaves it)."""
    path = tmp_path / "rankings.jsonl"
    third = line("3")
    path.write_text(line("1") + line("2") + third[: len(third) // 2])
    return path


def test_every_reader_loads_a_file_with_a_torn_last_line_and_reports_it(torn, caplog):
    with caplog.at_level(logging.WARNING):
        assert [row["item"] for _, row in read_jsonl(torn)] == ["1", "2"]
        assert len(load_rankings(str(torn))) == 2  # `rlhf train rm` and `rlhf train dpo` read through this
    assert "rankings.jsonl:3: skipped a torn last line" in caplog.text


def test_the_store_cuts_the_torn_line_before_it_appends(torn, caplog):
    with caplog.at_level(logging.WARNING):
        store = RankingStore(torn)
    assert "cut a torn last line" in caplog.text
    assert store.has("2", "ana") and not store.has("3", "ana")
    assert store.append(json.loads(line("3")))
    assert torn.read_text() == line("1") + line("2") + line("3")


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text(line("1").rstrip("\n"))
    store = RankingStore(path)
    store.append(json.loads(line("2")))
    assert path.read_text() == line("1") + line("2")


def test_a_bad_line_elsewhere_is_still_an_error(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text(line("1") + "{torn\n" + line("2"))
    with pytest.raises(UserError, match="rankings.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_a_second_submit_of_an_item_by_one_annotator_is_not_written(tmp_path):
    path = tmp_path / "rankings.jsonl"
    store = RankingStore(path)
    assert store.append(json.loads(line("1")))
    assert not store.append({**json.loads(line("1")), "ranking": [0, 1]})
    assert store.append(json.loads(line("1", annotator="bo")))
    assert RankingStore(path).count_by_item["1"] == 2  # and a restart sees the same
    assert path.read_text() == line("1") + line("1", annotator="bo")

"""`rlhf data import`: Label Studio ranker exports and Argilla ranking records (small fixtures written by
hand from the tools' documented formats) become the K-wise lines `rlhf train rm` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl
from rlhf.label.imports import argilla_rows, label_studio_rows
from rlhf.training.preferences import load_rankings

DATA = Path(__file__).parent / "data"


def imported(tmp_path, source: str, export: str) -> list[dict]:
    out = tmp_path / "rankings.jsonl"
    assert main(["data", "import", "--from", source, str(DATA / export), "--out", str(out)]) == 0
    load_rankings(str(out))  # the reader of `rlhf train rm` takes every line
    return [row for _, row in read_jsonl(out)]


def test_label_studio_ranker_export(tmp_path, capsys):
    rows = imported(tmp_path, "label-studio", "label_studio_export.json")
    assert "wrote 2 rankings" in capsys.readouterr().out  # the cancelled annotation and the unannotated task: none
    responses = [
        "Wars led to library's ruin.",
        "Library's end through various wars.",
        "Ruin resulted from library wars.",
    ]
    assert rows[0] == {
        "prompt": "What caused the ancient library of Alexandria to be destroyed?",
        "responses": responses,
        "ranking": [1, 2, 0],  # llm_2, llm_3, llm_1
        "annotator": "1",
        "item": "label-studio:11",
        "seconds": 12.5,
    }
    assert (rows[1]["ranking"], rows[1]["annotator"], rows[1]["seconds"]) == ([1, 0, 2], "bo@example.com", 7.0)


def test_label_studio_buckets_or_missing_items_are_refused_in_one_line():
    task = json.loads((DATA / "label_studio_export.json").read_text())[0]
    result = task["annotations"][0]["result"][0]
    result["value"] = {"ranker": {"good": ["llm_1"], "bad": ["llm_2", "llm_3"]}}
    with pytest.raises(UserError, match="task 11: a ranker result with buckets"):
        list(label_studio_rows([task], "prompt"))
    result["value"] = {"ranker": {"rank": ["llm_1", "llm_2"]}}
    with pytest.raises(UserError, match="does not hold each item"):
        list(label_studio_rows([task], "prompt"))
    with pytest.raises(UserError, match='no string "question" in its data'):
        list(label_studio_rows([task], "question"))


def test_argilla_v1_records_with_a_tie_and_a_discarded_response(tmp_path):
    rows = imported(tmp_path, "argilla", "argilla_v1_records.json")
    assert [r["annotator"] for r in rows] == ["ana", "bo"]  # cy discarded theirs
    assert rows[0]["responses"] == ["Cats are kind.", "Cats are dull.", "Roads are cold."]
    assert (rows[0]["ranking"], "ties" in rows[0]) == ([0, 1, 2], False)
    assert (rows[1]["ranking"], rows[1]["ties"]) == ([0, 1, 2], [[1, 2]])  # response-2 and -3 share rank 2
    assert rows[0]["item"] == rows[1]["item"] == "argilla:cats-1"


def test_argilla_flat_dataset_export(tmp_path):
    (row,) = imported(tmp_path, "argilla", "argilla_flat_records.jsonl")
    assert (row["responses"], row["ranking"]) == (["Rivers are calm.", "Rivers are gloomy."], [1, 0])


def test_argilla_v2_records_and_options_that_name_no_field():
    record = {
        "id": "r7",
        "fields": {"prompt": "Say hi.", "a": "Hi.", "b": "Go away."},
        "responses": {"ranking": [{"user_id": "u1", "value": [{"value": "b", "rank": 2}, {"value": "a", "rank": 1}]}]},
    }
    (row,) = argilla_rows([record], "prompt")
    assert (row["responses"], row["ranking"], row["annotator"], row["item"]) == (
        ["Hi.", "Go away."],
        [0, 1],
        "u1",
        "argilla:r7",
    )
    record["responses"]["ranking"][0]["value"][0]["value"] = "c"
    with pytest.raises(UserError, match="record r7: the ranked options"):
        list(argilla_rows([record], "prompt"))


def test_an_export_without_rankings_or_not_json_is_one_line(tmp_path, capsys):
    empty, junk = tmp_path / "empty.json", tmp_path / "junk.json"
    empty.write_text("[]")
    junk.write_text("{nope")
    for export, message in ((empty, "holds no submitted rankings"), (junk, "neither JSON nor JSON lines")):
        assert main(["data", "import", "--from", "argilla", str(export), "--out", str(tmp_path / "o.jsonl")]) == 2
        assert message in capsys.readouterr().err

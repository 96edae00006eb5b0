"""`rlhf label stats`: pairwise agreement and Kendall's tau-b on cases worked out by hand."""

from __future__ import annotations

import json

import pytest

from rlhf.cli import main
from rlhf.label.stats import kendall_tau_b, label_stats, levels, pairwise_agreement


def test_levels_put_tied_responses_on_one_tier():
    assert levels([2, 0, 1], []) == [1, 2, 0]
    assert levels([1, 0, 2, 3], [[0, 2]]) == [1, 0, 1, 2]  # 1 > {0, 2} > 3


def test_agreement_and_tau_on_hand_computed_cases():
    # A: 0 > 1 > 2; B: 1 > 0 > 2. Pairs (0,1) disagree, (0,2) and (1,2) agree: 2/3; tau = (2 - 1) / sqrt(3 * 3).
    assert pairwise_agreement([0, 1, 2], [1, 0, 2]) == pytest.approx(2 / 3)
    assert kendall_tau_b([0, 1, 2], [1, 0, 2]) == pytest.approx(1 / 3)
    assert kendall_tau_b([0, 1, 2], [2, 1, 0]) == pytest.approx(-1)
    # A ties 1 and 2 (tiers 0,1,1); B: 0 > 1 > 2. (0,1), (0,2) concordant; (1,2) tied by A only.
    # Agreement 2/3; tau-b = (2 - 0) / sqrt(2 untied by A * 3 untied by B) = 0.8165.
    assert pairwise_agreement([0, 1, 1], [0, 1, 2]) == pytest.approx(2 / 3)
    assert kendall_tau_b([0, 1, 1], [0, 1, 2]) == pytest.approx(2 / 6**0.5)
    assert kendall_tau_b([0, 0, 0], [0, 1, 2]) is None  # one annotator tied everything
    assert pairwise_agreement([0, 0, 0], [0, 0, 0]) == 1


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(item, annotator, ranking, seconds, responses=("a", "b", "c")):
    return {"prompt": item, "responses": list(responses)[: len(ranking)], "ranking": ranking, "annotator": annotator,
            "item": item, "seconds": seconds}  # fmt: skip


@pytest.fixture
def rankings(tmp_path):
    return write(
        tmp_path / "r.jsonl",
        [
            row("x", "ana", [0, 1, 2], 2),
            row("x", "bo", [1, 0, 2], 4),
            row("y", "ana", [2, 1, 0], 6),
            row("z", "ana", [0, 1], 1),
            row("z", "bo", [1, 0], 1),
            row("z", "cy", [1, 0], 1),
        ],
    )


def test_stats_of_a_file(rankings):
    stats = label_stats(str(rankings))
    assert (stats.rankings, stats.items, stats.shared_items) == (6, 3, 2)
    assert stats.by_annotator == {"ana": 3, "bo": 2, "cy": 1}
    # (item, pair) cases: x ana/bo (2/3, 1/3); z ana/bo (0, -1); z ana/cy (0, -1); z bo/cy (1, 1)
    assert stats.agreement == pytest.approx((2 / 3 + 0 + 0 + 1) / 4)
    assert stats.kendall_tau == pytest.approx((1 / 3 - 1 - 1 + 1) / 4)
    assert stats.by_pair[("ana", "bo")] == pytest.approx((2, 1 / 3, -1 / 3))
    assert stats.by_pair[("bo", "cy")] == pytest.approx((1, 1, 1))


def test_stats_command_prints_counts_time_and_agreement(rankings, capsys):
    assert main(["label", "stats", str(rankings)]) == 0
    out = capsys.readouterr().out
    assert "rankings: 6 of 3 items by 3 annotators" in out
    assert "time per item: median 1.5s, mean 2.5s" in out
    assert "agreement: pairwise 0.417, Kendall's tau-b -0.167" in out


def test_stats_of_a_bad_file_is_one_line(tmp_path, capsys):
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}])
    assert main(["label", "stats", str(bad)]) == 2
    assert "bad.jsonl:1: 'ranking' must list each index" in capsys.readouterr().err

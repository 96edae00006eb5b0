"""Ties (`rlhf label --ties`, Argilla's equal ranks): `rlhf train rm` and `rlhf train dpo` read them as no
comparison between the tied responses, and refuse tie groups that do not stand together in the ranking."""

from __future__ import annotations

import pytest

from rlhf.core.errors import UserError
from rlhf.training.preferences import collate, parse_row

ROW = {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 1, 3]}


def test_tied_pairs_are_no_comparison():
    assert parse_row(ROW, "row").comparisons() == [(2, 0), (2, 1), (2, 3), (0, 1), (0, 3), (1, 3)]
    tied = parse_row({**ROW, "ties": [[0, 1]]}, "row")  # 2 > {0, 1} > 3
    assert tied.comparisons() == [(2, 0), (2, 1), (2, 3), (0, 3), (1, 3)]
    assert len(collate([tied]).winners) == 5
    everything = parse_row({**ROW, "ties": [[2, 0, 1, 3]]}, "row")
    assert everything.comparisons() == []


@pytest.mark.parametrize(
    "ties",
    [
        [[2, 1]],  # 0 stands between them
        [[0]],  # a group of one
        [[0, 0]],
        [[0, 1], [1, 3]],  # 1 in two groups
        [[0, 7]],
        [0, 1],
        "01",
        [["0", "1"]],
    ],
)
def test_ties_that_are_not_groups_standing_together_are_refused(ties):
    with pytest.raises(UserError, match="row: 'ties' must be groups of 2\\+ response indices"):
        parse_row({**ROW, "ties": ties}, "row")

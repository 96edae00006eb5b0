"""Prompt order and its cursor, and the one-line errors for bad input files."""

from __future__ import annotations

import pytest

from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl_field
from rlhf.learner.data import CursorSampler


def test_cursor_sampler_covers_each_pass_once_and_resumes_from_the_cursor():
    items = list(range(5))
    sampler = CursorSampler(items, seed=3)
    first, second, third = sampler.take(3), sampler.take(3), sampler.take(4)
    assert sorted(first + second[:2]) == items  # the first pass: every item once
    assert sorted(second[2:] + third) == items  # the second pass, in a fresh order
    assert first + second[:2] != second[2:] + third
    resumed = CursorSampler(items, seed=3, cursor=3)
    assert resumed.take(7) == second + third


def test_bad_jsonl_lines_are_one_line_errors(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"text": "b"}\n')
    with pytest.raises(UserError, match=r'prompts.jsonl:3: expected a string "prompt" field'):
        read_jsonl_field(str(path), "prompt")
    path.write_text("\n")
    with pytest.raises(UserError, match="holds no prompts"):
        read_jsonl_field(str(path), "prompt")
    with pytest.raises(UserError, match="cannot read"):
        read_jsonl_field(str(tmp_path / "missing.jsonl"), "prompt")

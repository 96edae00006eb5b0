"""Preference data: per-prompt rankings, their C(K,2) comparisons, and batches that keep them together.

Two row shapes, mixed freely in one file (JSONL, Parquet, or a cached Hugging Face dataset):

    {"prompt": P, "chosen": A, "rejected": B}                        # pairwise: K = 2
    {"prompt": P, "responses": [y0, ..., yK-1], "ranking": [i, ...]}  # K-wise, indices best first
    ... "ranking": [2, 0, 1, 3], "ties": [[0, 1]]}                    # 2 > {0, 1} > 3 (`rlhf label --ties`)

Tied responses stand next to each other in "ranking"; the pairs among them are no comparison.

A batch holds whole prompts: every comparison of a prompt lands in the same batch (InstructGPT's
fix for the overfitting that comes from seeing a completion in K-1 separate updates), and each
distinct (prompt, response) is encoded once per batch however many comparisons it takes part in.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl


@dataclass(frozen=True)
class Ranking:
    """One prompt's responses, ordered by preference: `order[0]` indexes the best response."""

    prompt: str
    responses: tuple[str, ...]
    order: tuple[int, ...]
    ties: tuple[frozenset[int], ...] = ()  # groups of responses ranked equal

    def comparisons(self) -> list[tuple[int, int]]:
        """The (winner, loser) index pairs implied by the order: all C(K,2) of them, less the tied pairs."""
        tied = {i: group for group in self.ties for i in group}
        return [(w, lo) for w, lo in itertools.combinations(self.order, 2) if lo not in tied.get(w, ())]


@dataclass
class ComparisonBatch:
    """Distinct (prompt, response) items plus the comparisons between them, by index into `items`."""

    items: list[tuple[str, str]]
    winners: list[int]  # (P,) index of y_w in items
    losers: list[int]  # (P,) index of y_l in items
    group: list[int]  # (P,) which prompt of the batch each comparison belongs to
    num_prompts: int


def parse_row(row: dict, where: str) -> Ranking:
    """A Ranking from either row shape; `where` names the row in error messages."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise UserError(f"{where}: needs a string 'prompt'")
    if row.get("responses") is not None or row.get("ranking") is not None:
        responses, order = row.get("responses"), row.get("ranking")
        if not isinstance(responses, Sequence) or not all(isinstance(r, str) for r in responses):
            raise UserError(f"{where}: 'responses' must be a list of strings")
        if len(responses) < 2:
            raise UserError(f"{where}: a ranking needs at least 2 responses, got {len(responses)}")
        if not isinstance(order, Sequence) or sorted(order) != list(range(len(responses))):
            raise UserError(f"{where}: 'ranking' must list each index 0..{len(responses) - 1} once, best first")
        order = tuple(int(i) for i in order)
        return Ranking(prompt, tuple(responses), order, _ties(row.get("ties") or [], order, where))
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        return Ranking(prompt, (chosen, rejected), (0, 1))
    raise UserError(f"{where}: needs 'chosen' and 'rejected' strings, or 'responses' and 'ranking'")


def _ties(ties, order: tuple[int, ...], where: str) -> tuple[frozenset[int], ...]:
    """The tie groups, checked: each holds 2+ distinct indices that stand together in the order, in no other group."""
    bad = UserError(f"{where}: 'ties' must be groups of 2+ response indices that stand together in 'ranking'")
    if not isinstance(ties, list):
        raise bad
    groups: list[frozenset[int]] = []
    for group in ties:
        if not isinstance(group, list) or len(group) < 2 or not all(isinstance(i, int) for i in group):
            raise bad
        members = frozenset(group)
        if len(members) != len(group) or not members <= set(order) or any(members & g for g in groups):
            raise bad
        positions = sorted(order.index(i) for i in members)
        if positions[-1] - positions[0] != len(group) - 1:
            raise bad
        groups.append(members)
    return tuple(groups)


def load_rankings(source: str) -> list[Ranking]:
    """Rankings from a .jsonl/.json-lines file, a .parquet file, or a cached `datasets` name[:split]."""
    path = Path(source)
    if path.suffix == ".parquet":
        return [parse_row(row, f"{source} row {i}") for i, row in enumerate(_parquet_rows(path))]
    if path.exists():
        return [parse_row(row, where) for where, row in read_jsonl(path)]
    if source.startswith((".", "/")) or path.suffix in (".jsonl", ".json"):
        raise UserError(f"preference data {source} does not exist")
    return [parse_row(row, f"{source} row {i}") for i, row in enumerate(_dataset_rows(source))]


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from err


def _dataset_rows(name: str) -> Iterable[dict]:
    """A Hugging Face dataset the user has cached (`name` or `name:split`, default split train)."""
    import datasets

    name, _, split = name.partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs one line
        raise UserError(f"cannot load dataset {name!r} (not a file, not in the datasets cache): {err}") from err


def split_rankings(rankings: list[Ranking], eval_fraction: float, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    """Shuffle whole prompts, then hold out eval_fraction of them (at least one when the fraction > 0)."""
    if not 0 <= eval_fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    shuffled = list(rankings)
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * eval_fraction)) if eval_fraction > 0 else 0
    if len(shuffled) - n_eval < 1:
        raise UserError(f"need at least {n_eval + 1} rankings for --eval-fraction {eval_fraction}")
    return shuffled[n_eval:], shuffled[:n_eval]


def collate(rankings: Sequence[Ranking]) -> ComparisonBatch:
    """One batch: every comparison of every ranking, over distinct (prompt, response) items."""
    items: list[tuple[str, str]] = []
    index: dict[tuple[str, str], int] = {}
    winners, losers, group = [], [], []
    for g, ranking in enumerate(rankings):
        slots = []
        for response in ranking.responses:
            key = (ranking.prompt, response)
            if key not in index:
                index[key] = len(items)
                items.append(key)
            slots.append(index[key])
        for winner, loser in ranking.comparisons():
            winners.append(slots[winner])
            losers.append(slots[loser])
            group.append(g)
    return ComparisonBatch(items, winners, losers, group, len(rankings))


def prompt_batches(
    rankings: Sequence[Ranking], batch_size: int, rng: random.Random | None = None
) -> list[ComparisonBatch]:
    """Batches of `batch_size` prompts (shuffled when rng is given); a prompt is never split."""
    order = list(range(len(rankings)))
    if rng is not None:
        rng.shuffle(order)
    return [collate([rankings[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]


def completions(rankings: Iterable[Ranking]) -> list[tuple[str, str]]:
    """Every distinct (prompt, response) in the rankings: the reference completions for normalization."""
    return list(dict.fromkeys((r.prompt, y) for r in rankings for y in r.responses))

"""Preference data: per-prompt rankings, their C(K,2) comparisons, and batches that keep them together.

Two row shapes, mixed freely in one file (JSONL, Parquet, or a cached Hugging Face dataset):

    {"prompt": P, "chosen": A, "rejected": B}                        # pairwise: K = 2
    {"prompt": P, "responses": [y0, ..., yK-1], "ranking": [i, ...]}  # K-wise, indices best first
    ... "ranking": [2, 0, 1, 3], "ties": [[0, 1]]}                    # 2 > {0, 1} > 3 (`rlhf label --ties`)

Tied responses stand next to each other in "ranking"; the pairs among them are no comparison.

In the conversational form P and each response are lists of messages (rlhf.core.chat), and "prompt" may be left
out of a chosen/rejected row: the messages the two conversations share from the start become the prompt. One
file holds one form. render_rankings turns conversational rankings into text with the model's chat template
once its tokenizer is loaded: the prompt with the generation prompt, each response as what follows it.

A batch holds whole prompts: every comparison of a prompt lands in the same batch (InstructGPT's
fix for the overfitting that comes from seeing a completion in K-1 separate updates), and each
distinct (prompt, response) is encoded once per batch however many comparisons it takes part in.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlhf.core.chat import Conversation, is_conversation, parse_conversation, render, render_completion
from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl


@dataclass(frozen=True)
class Ranking:
    """One prompt's responses, ordered by preference: `order[0]` indexes the best response."""

    prompt: str | Conversation
    responses: tuple[str, ...] | tuple[Conversation, ...]
    order: tuple[int, ...]
    ties: tuple[frozenset[int], ...] = ()  # groups of responses ranked equal
    where: str = field(default="", compare=False)  # the row it came from, for rendering errors

    @property
    def is_conversation(self) -> bool:
        return isinstance(self.prompt, tuple)

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
    """A Ranking from either row shape, standard or conversational; `where` names the row in error messages."""
    if any(is_conversation(row.get(key)) for key in ("prompt", "chosen", "rejected")) or any(
        is_conversation(r) for r in row.get("responses") or []
    ):
        return parse_conversational_row(row, where)
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
        return Ranking(prompt, tuple(responses), order, _ties(row.get("ties") or [], order, where), where)
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        return Ranking(prompt, (chosen, rejected), (0, 1), where=where)
    raise UserError(f"{where}: needs 'chosen' and 'rejected' strings, or 'responses' and 'ranking'")


def parse_conversational_row(row: dict, where: str) -> Ranking:
    if row.get("responses") is not None or row.get("ranking") is not None:
        responses = row.get("responses")
        if not isinstance(responses, list):
            raise UserError(f"{where}: 'responses' must be a list of conversations")
        texts = [f"r{i}" for i in range(len(responses))]
        ranking = parse_row({**row, "prompt": "", "responses": texts}, where)  # checks ranking and ties
        prompt = parse_conversation(row.get("prompt"), where, "prompt")
        conversations = tuple(parse_conversation(r, where, f"responses[{i}]") for i, r in enumerate(responses))
        return replace(ranking, prompt=prompt, responses=conversations, where=where)
    chosen = parse_conversation(row.get("chosen"), where, "chosen")
    rejected = parse_conversation(row.get("rejected"), where, "rejected")
    if row.get("prompt") is not None:
        return Ranking(parse_conversation(row["prompt"], where, "prompt"), (chosen, rejected), (0, 1), where=where)
    prompt, chosen, rejected = split_shared_prompt(chosen, rejected, where)
    return Ranking(prompt, (chosen, rejected), (0, 1), where=where)


def split_shared_prompt(
    chosen: Conversation, rejected: Conversation, where: str
) -> tuple[Conversation, Conversation, Conversation]:
    """The implicit prompt: the messages both conversations open with; then what follows it in each."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0 or shared == len(chosen) or shared == len(rejected):
        raise UserError(f"{where}: 'chosen' and 'rejected' must share a prompt and then differ (no 'prompt' given)")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def render_rankings(rankings: Sequence[Ranking], tokenizer) -> list[Ranking]:
    """Conversational rankings as text rendered with the tokenizer's chat template; standard ones as they are."""
    return [render_ranking(r, tokenizer) if r.is_conversation else r for r in rankings]


def render_ranking(ranking: Ranking, tokenizer) -> Ranking:
    prompt = render(tokenizer, ranking.prompt, generation_prompt=True, where=ranking.where)
    responses = tuple(render_completion(tokenizer, ranking.prompt, y, ranking.where)[1] for y in ranking.responses)
    return replace(ranking, prompt=prompt, responses=responses)


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
        rows = [(f"{source} row {i}", row) for i, row in enumerate(_parquet_rows(path))]
    elif path.exists():
        rows = read_jsonl(path)
    elif source.startswith((".", "/")) or path.suffix in (".jsonl", ".json"):
        raise UserError(f"preference data {source} does not exist")
    else:
        rows = [(f"{source} row {i}", row) for i, row in enumerate(_dataset_rows(source))]
    return one_form([parse_row(row, where) for where, row in rows])


def one_form(rankings: list[Ranking]) -> list[Ranking]:
    """The rankings, if all standard or all conversational; else a one-line error naming the first odd row."""
    odd = next((r for r in rankings if r.is_conversation != rankings[0].is_conversation), None)
    if odd is not None:
        raise UserError(f"{odd.where}: standard (string) and conversational (messages) rows are mixed in one file")
    return rankings


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

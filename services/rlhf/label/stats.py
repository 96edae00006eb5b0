"""`rlhf label stats rankings.jsonl`: how much is ranked, how long it took, and whether annotators agree.

Agreement is measured on shared items (ranked by two or more annotators), for each pair of
annotators on each such item, over the C(K,2) pairs of responses:
- pairwise agreement: the share of response pairs both order the same way (both tie, or both prefer
  the same one);
- Kendall's tau-b: (concordant - discordant) / sqrt((pairs - tied by one) (pairs - tied by the other)),
  1 for the same order, -1 for the reverse; undefined (left out) when one annotator tied everything.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl
from rlhf.training.preferences import parse_row


@dataclass
class LabelStats:
    rankings: int
    items: int
    by_annotator: dict[str, int]
    seconds: list[float]  # time per ranking, where recorded
    shared_items: int
    agreement: float | None  # mean over (shared item, annotator pair)
    kendall_tau: float | None
    by_pair: dict[tuple[str, str], tuple[int, float, float | None]] = field(default_factory=dict)  # n, agree, tau


def levels(ranking: list[int], ties: list[list[int]]) -> list[int]:
    """Each response's tier, 0 for the best; a tie group (listed together in `ranking`) shares one tier."""
    group_of = {i: frozenset(t) for t in ties for i in t}
    level, tier, previous = {}, -1, None
    for i in ranking:
        group = group_of.get(i)
        tier += group is None or group != previous
        level[i], previous = tier, group
    return [level[i] for i in range(len(ranking))]


def pair_signs(tier: list[int]) -> list[int]:
    """For each pair (i < j) of responses: +1 when i ranks above j, -1 below, 0 tied."""
    return [(tier[j] > tier[i]) - (tier[j] < tier[i]) for i, j in itertools.combinations(range(len(tier)), 2)]


def pairwise_agreement(a: list[int], b: list[int]) -> float:
    """Share of response pairs two annotators (tier lists) order the same way."""
    signs_a, signs_b = pair_signs(a), pair_signs(b)
    return sum(x == y for x, y in zip(signs_a, signs_b, strict=True)) / len(signs_a)


def kendall_tau_b(a: list[int], b: list[int]) -> float | None:
    """Kendall's tau-b between two annotators' tier lists; None when either tied every pair."""
    signs_a, signs_b = pair_signs(a), pair_signs(b)
    concordant = sum(x * y > 0 for x, y in zip(signs_a, signs_b, strict=True))
    discordant = sum(x * y < 0 for x, y in zip(signs_a, signs_b, strict=True))
    untied_a, untied_b = sum(x != 0 for x in signs_a), sum(y != 0 for y in signs_b)
    if not untied_a or not untied_b:
        return None
    return (concordant - discordant) / math.sqrt(untied_a * untied_b)


def label_stats(path: str) -> LabelStats:
    rows = read_jsonl(path)
    if not rows:
        raise UserError(f"{path} holds no rankings")
    by_item: dict[str, list[tuple[str, list[str], list[int]]]] = defaultdict(list)
    by_annotator: dict[str, int] = defaultdict(int)
    seconds = []
    for where, row in rows:
        annotator, responses, tier = _parse(where, row)
        by_item[_item_key(row)].append((annotator, responses, tier))
        by_annotator[annotator] += 1
        if isinstance(row.get("seconds"), int | float):
            seconds.append(float(row["seconds"]))
    pairs: dict[tuple[str, str], list[tuple[float, float | None]]] = defaultdict(list)
    shared = 0
    for rankings in by_item.values():
        shared += len({a for a, _, _ in rankings}) > 1
        for (a, ra, ta), (b, rb, tb) in itertools.combinations(sorted(rankings, key=lambda r: r[0]), 2):
            if a != b and ra == rb:  # the same responses in the same order: indices compare
                pairs[(a, b)].append((pairwise_agreement(ta, tb), kendall_tau_b(ta, tb)))
    every = [m for ms in pairs.values() for m in ms]
    taus = [t for _, t in every if t is not None]
    return LabelStats(
        rankings=len(rows),
        items=len(by_item),
        by_annotator=dict(sorted(by_annotator.items())),
        seconds=seconds,
        shared_items=shared,
        agreement=statistics.fmean(a for a, _ in every) if every else None,
        kendall_tau=statistics.fmean(taus) if taus else None,
        by_pair={
            pair: (len(ms), statistics.fmean(a for a, _ in ms), _mean([t for _, t in ms if t is not None]))
            for pair, ms in sorted(pairs.items())
        },
    )


def format_stats(stats: LabelStats) -> str:
    lines = [f"rankings: {stats.rankings} of {stats.items} items by {len(stats.by_annotator)} annotators"]
    lines += [f"  {name}: {count}" for name, count in stats.by_annotator.items()]
    if stats.seconds:
        s = stats.seconds
        lines.append(f"time per item: median {statistics.median(s):.1f}s, mean {statistics.fmean(s):.1f}s")
    lines.append(f"shared items (2+ annotators): {stats.shared_items}")
    if stats.agreement is not None:
        tau = "n/a" if stats.kendall_tau is None else f"{stats.kendall_tau:+.3f}"
        lines.append(f"agreement: pairwise {stats.agreement:.3f}, Kendall's tau-b {tau}")
        for (a, b), (n, agree, pair_tau) in stats.by_pair.items():
            shown = "n/a" if pair_tau is None else f"{pair_tau:+.3f}"
            lines.append(f"  {a} / {b}: {n} items, pairwise {agree:.3f}, tau-b {shown}")
    return "\n".join(lines)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _parse(where: str, row: dict) -> tuple[str, list[str], list[int]]:
    """(annotator, responses, each response's tier) of a rankings line, checked as `rlhf train rm` checks it."""
    ranking = parse_row(row, where)
    tiers = levels(list(ranking.order), [list(group) for group in ranking.ties])
    return str(row.get("annotator", "(unnamed)")), list(ranking.responses), tiers


def _item_key(row: dict) -> str:
    if isinstance(row.get("item"), str):
        return row["item"]
    return hashlib.sha1(json.dumps([row.get("prompt"), row.get("responses")]).encode()).hexdigest()

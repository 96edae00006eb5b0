"""What gets ranked: prompts with K responses, from a candidates file or sampled from a policy service,
and which prompt each annotator sees next.

An item's id is a hash of its prompt (plus its occurrence, for repeated prompts), so a restart with the
same prompts file finds what each annotator already ranked. A sampled item keeps the responses it was
first ranked with: a restart reads them back from the rankings file instead of sampling again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field

from rlhf.core.errors import UserError
from rlhf.core.jsonl import read_jsonl, read_jsonl_field
from rlhf.label.config import LabelConfig
from rlhf.label.store import RankingStore


@dataclass
class Item:
    id: str
    prompt: str
    index: int  # position in the prompts file: the sampling seed is config.seed + index
    responses: list[str] | None = None  # None until sampled
    provenance: dict = field(default_factory=dict)  # weights_version and seed of sampled responses


def item_ids(prompts: list[str]) -> list[str]:
    """A stable id per prompt: 12 hex digits of its SHA-1, with "-n" on its n-th repeat."""
    seen: Counter[str] = Counter()
    ids = []
    for prompt in prompts:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]
        ids.append(digest if not seen[digest] else f"{digest}-{seen[digest]}")
        seen[digest] += 1
    return ids


def load_items(config: LabelConfig) -> list[Item]:
    """The items of --prompts and/or --candidates (with both, the candidates of each listed prompt)."""
    if bool(config.policy) == bool(config.candidates):
        raise UserError("give one of --policy HOST:PORT (sample K responses) and --candidates FILE")
    if not config.prompts and not config.candidates:
        raise UserError("give --prompts FILE (JSONL with a 'prompt' per line)")
    if not config.candidates:
        prompts = read_jsonl_field(config.prompts, "prompt")
        return [Item(i, p, n) for n, (i, p) in enumerate(zip(item_ids(prompts), prompts, strict=True))]
    candidates = _read_candidates(config.candidates)
    if config.prompts:  # the candidates of each listed prompt, in the prompts file's order
        by_prompt: dict[str, list[list[str]]] = {}
        for prompt, responses in candidates:
            by_prompt.setdefault(prompt, []).append(responses)
        prompts = read_jsonl_field(config.prompts, "prompt")
        missing = [p for p in prompts if not by_prompt.get(p)]
        if missing:
            raise UserError(f"{config.candidates} has no responses for prompt {missing[0]!r} of {config.prompts}")
        candidates = [(p, by_prompt[p].pop(0) if len(by_prompt[p]) > 1 else by_prompt[p][0]) for p in prompts]
    ids = item_ids([prompt for prompt, _ in candidates])
    return [
        Item(i, prompt, n, responses) for n, (i, (prompt, responses)) in enumerate(zip(ids, candidates, strict=True))
    ]


def _read_candidates(path: str) -> list[tuple[str, list[str]]]:
    candidates = []
    for where, row in read_jsonl(path):
        prompt, responses = row.get("prompt"), row.get("responses")
        if not isinstance(prompt, str):
            raise UserError(f'{where}: needs a string "prompt"')
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise UserError(f'{where}: "responses" must be a list of at least 2 strings')
        candidates.append((prompt, responses))
    if not candidates:
        raise UserError(f"{path} holds no candidates")
    return candidates


class ItemQueue:
    """Hands each annotator the next item they have not ranked that still needs annotators (--overlap)."""

    def __init__(self, items: list[Item], store: RankingStore, overlap: int, sample=None):
        self.items = {item.id: item for item in items}
        self.store, self.overlap, self._sample = store, overlap, sample
        self._showing: dict[str, str] = {}  # annotator -> the item on their page
        self._lock = threading.Lock()
        for item in items:
            if ranked := store.first_row_of_item.get(item.id):
                item.responses = ranked["responses"]
                item.provenance = {k: ranked[k] for k in ("weights_version", "seed") if k in ranked}

    def next_for(self, annotator: str) -> Item | None:
        """The item to show `annotator` (the same one until they submit it), or None when they are done."""
        with self._lock:
            current = self._showing.get(annotator)
            if current and not self.store.has(current, annotator):
                item = self.items[current]
            else:
                item = self._pick(annotator)
                if item is None:
                    self._showing.pop(annotator, None)
                    return None
                self._showing[annotator] = item.id
        if item.responses is None:
            self._fill(item)
        return item

    def _pick(self, annotator: str) -> Item | None:
        shown_to_others = Counter(i for a, i in self._showing.items() if a != annotator)
        for item in self.items.values():
            if self.store.has(item.id, annotator):
                continue
            if self.store.count_by_item[item.id] + shown_to_others[item.id] < self.overlap:
                return item
        return None

    def _fill(self, item: Item) -> None:
        with self._lock:  # one Generate per item, whoever asks first
            if item.responses is None:
                item.responses, item.provenance = self._sample(item)

    def remaining_for(self, annotator: str) -> int:
        """Items this annotator could still be given (an upper bound while others are ranking)."""
        return sum(
            1
            for item in self.items.values()
            if not self.store.has(item.id, annotator) and self.store.count_by_item[item.id] < self.overlap
        )

"""`rlhf data import --from label-studio|argilla EXPORT --out rankings.jsonl`: rankings made in another
labelling tool, as the K-wise lines `rlhf train rm` reads (the same lines `rlhf label` writes).

Label Studio, "LLM Ranker" (a List of items and a Ranker without buckets), JSON export: a list of tasks,

    {"id": 7, "data": {"prompt": P, "items": [{"id": "a", "body": text}, ...]},
     "annotations": [{"completed_by": 1, "lead_time": 12.5,
                      "result": [{"type": "ranker", "value": {"ranker": {"rank": ["b", "a", ...]}}}]}]}

Argilla, a RankingQuestion whose options name the record's response fields; the records as Argilla
keeps them (v1 `responses[].values[Q].value`, v2 `responses[Q][]`) or exported to a flat dataset
(`Q: [{"user_id", "value", "status"}]`). A ranking is `[{"value": "response-1", "rank": 1}, ...]`;
equal ranks are ties.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from rlhf.core.errors import UserError
from rlhf.core.files import write_text_atomic


def read_export(path: str) -> list[dict]:
    """The records of a JSON export (a list, or an object holding one under "records"/"tasks") or of JSONL."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: neither JSON nor JSON lines ({err.msg})") from None
    if isinstance(data, dict):
        data = data.get("records", data.get("tasks", [data]))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: expected a list of records (JSON objects)")
    return data


def label_studio_rows(tasks: list[dict], prompt_field: str) -> Iterator[dict]:
    for n, task in enumerate(tasks):
        where = f"task {task.get('id', n)}"
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        prompt = data.get(prompt_field)
        if not isinstance(prompt, str):
            raise UserError(f'{where}: no string "{prompt_field}" in its data (see --prompt-field)')
        ids, responses = _label_studio_items(data, where)
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result") or []:
                if result.get("type") != "ranker":
                    continue
                order = _label_studio_order(result.get("value"), where)
                if sorted(order) != sorted(ids):
                    raise UserError(f"{where}: its ranking {order} does not hold each item {ids} once")
                yield {
                    "prompt": prompt,
                    "responses": responses,
                    "ranking": [ids.index(i) for i in order],
                    "annotator": _user(annotation.get("completed_by")),
                    "item": f"label-studio:{task.get('id', n)}",
                    **({"seconds": annotation["lead_time"]} if _is_number(annotation.get("lead_time")) else {}),
                }


def _label_studio_items(data: dict, where: str) -> tuple[list[str], list[str]]:
    lists = [v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    items = data.get("items", lists[0] if len(lists) == 1 else None)
    if not isinstance(items, list) or not all(isinstance(x, dict) and "id" in x for x in items):
        raise UserError(f'{where}: its data needs the ranked list as "items": [{{"id", "body"}}, ...]')
    texts = [x.get("body", x.get("text")) for x in items]
    if not all(isinstance(t, str) for t in texts) or len(texts) < 2:
        raise UserError(f'{where}: each of at least 2 items needs a string "body"')
    return [str(x["id"]) for x in items], texts


def _label_studio_order(value, where: str) -> list[str]:
    ranker = value.get("ranker") if isinstance(value, dict) else None
    if not isinstance(ranker, dict) or len(ranker) != 1:
        buckets = sorted(ranker) if isinstance(ranker, dict) else ranker
        raise UserError(
            f"{where}: a ranker result with buckets {buckets} is no full ranking (use a Ranker without Buckets)"
        )
    (order,) = ranker.values()
    if not isinstance(order, list):
        raise UserError(f"{where}: the ranker result is not a list of item ids")
    return [str(i) for i in order]


def argilla_rows(records: list[dict], prompt_field: str) -> Iterator[dict]:
    for n, record in enumerate(records):
        where = f"record {record.get('id', record.get('external_id', n))}"
        fields = record["fields"] if isinstance(record.get("fields"), dict) else record
        prompt = fields.get(prompt_field)
        if not isinstance(prompt, str):
            raise UserError(f'{where}: no string field "{prompt_field}" (see --prompt-field)')
        for user, ranks in _argilla_rankings(record):
            ranked = {r["value"] for r in ranks}
            names = [f for f in fields if f in ranked]  # the responses in the record's field order
            if len(names) != len(ranks) or not all(isinstance(fields[v], str) for v in names):
                raise UserError(f"{where}: the ranked options {sorted(ranked)} must each name a text field, once")
            by_rank = sorted(ranks, key=lambda r: r["rank"])
            ranking = [names.index(r["value"]) for r in by_rank]
            ties = [
                [names.index(r["value"]) for r in by_rank if r["rank"] == rank]
                for rank in dict.fromkeys(r["rank"] for r in by_rank)
            ]
            yield {
                "prompt": prompt,
                "responses": [fields[v] for v in names],
                "ranking": ranking,
                **({"ties": [t for t in ties if len(t) > 1]} if any(len(t) > 1 for t in ties) else {}),
                "annotator": _user(user),
                "item": f"argilla:{record.get('id', record.get('external_id', n))}",
            }


def _argilla_rankings(record: dict) -> Iterator[tuple[object, list[dict]]]:
    """(user, [{"value", "rank"}]) for every submitted ranking response of the record, in any layout."""
    responses = record.get("responses")
    answers: list[dict] = []
    if isinstance(responses, list):  # v1: [{"user_id", "status", "values": {Q: {"value": ...}}}]
        for r in responses:
            for v in (r.get("values") or {}).values():
                answers.append({**r, "value": v.get("value") if isinstance(v, dict) else None})
    elif isinstance(responses, dict):  # v2: {Q: [{"user_id", "value", "status"}]}
        answers = [a for q in responses.values() if isinstance(q, list) for a in q if isinstance(a, dict)]
    else:  # flat dataset export: {Q: [{"user_id", "value", "status"}]} beside the fields
        answers = [a for q in record.values() if isinstance(q, list) for a in q if isinstance(a, dict)]
    for answer in answers:
        value = answer.get("value")
        if _is_ranking(value) and answer.get("status", "submitted") == "submitted":
            yield answer.get("user_id"), value


def _is_ranking(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(r, dict) and isinstance(r.get("value"), str) and _is_number(r.get("rank")) for r in value)
    )


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _user(user) -> str:
    if isinstance(user, dict):
        return str(user.get("email") or user.get("username") or user.get("id"))
    return "(unknown)" if user is None else str(user)


IMPORTERS: dict[str, Callable[[list[dict], str], Iterator[dict]]] = {
    "label-studio": label_studio_rows,
    "argilla": argilla_rows,
}


def import_rankings(source: str, export: str, out: str, prompt_field: str) -> int:
    """Convert `export` and write `out` atomically; the number of rankings written."""
    rows = list(IMPORTERS[source](read_export(export), prompt_field))
    if not rows:
        raise UserError(f"{export} holds no submitted rankings")
    write_text_atomic(Path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)

"""The bundled synthetic task: tests, benchmarks and the demo run on it.

Prompts ask about a topic; responses say "<subject> are <adjectives>.". A hidden ground-truth
rule scores each response (`ground_truth_score`): +1 when it is about the prompt's topic, and
+0.5 for each pleasant adjective minus 0.5 for each unpleasant one (net count capped at 3).
Preference labels come from that rule plus Gumbel noise, the way human labellers disagree;
the reward model only ever sees the labels. SFT demonstrations are deliberately middling
(often off-topic, mixed adjectives), so there is room for PPO to improve on them.

    rlhf data synth --out data/
    rlhf data synth --out data/ --chat     # the same task as conversations (rlhf.core.chat)

In the chat form a prompt is one user message holding the question, and a response one assistant message;
the model's chat template then writes what "Human: ...\nAssistant:" spells out in the text form.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

TOPICS = [
    "cats",
    "dogs",
    "rivers",
    "mountains",
    "apples",
    "books",
    "trains",
    "gardens",
    "stars",
    "oceans",
    "birds",
    "cities",
    "forests",
    "songs",
    "clouds",
    "bridges",
    "horses",
    "islands",
    "lamps",
    "roads",
]
PLEASANT = ["kind", "bright", "warm", "gentle", "lovely", "happy", "calm", "brave", "clever", "graceful"]
UNPLEASANT = ["dull", "cold", "sad", "ugly", "noisy", "boring", "rude", "gloomy", "clumsy", "dreary"]
NEUTRAL = ["big", "small", "old", "new", "round", "tall", "green", "common", "distant", "heavy"]
ADJECTIVES = PLEASANT + UNPLEASANT + NEUTRAL
TEMPLATES = [
    "Tell me about {t}.",
    "Describe {t}.",
    "What do you think of {t}?",
    "Write a line about {t}.",
    "Say something about {t}.",
    "How would you describe {t}?",
]
PROMPT_FORMAT = "Human: {q}\nAssistant:"
LABEL_NOISE = 0.25  # Gumbel scale; two responses 0.5 apart are ranked the wrong way ~12% of the time
MAX_NET_ADJECTIVES = 3

_WORD = re.compile(r"[a-z]+")


def make_prompt(rng: random.Random, topic: str | None = None) -> str:
    return PROMPT_FORMAT.format(q=rng.choice(TEMPLATES).format(t=topic or rng.choice(TOPICS)))


def topic_of(prompt: str) -> str | None:
    question = prompt.split("Assistant:")[0]
    return next((w for w in _WORD.findall(question.lower()) if w in TOPICS), None)


def make_response(rng: random.Random, topic: str | None, on_topic: float = 0.6) -> str:
    """A middling demonstration: on topic with probability on_topic, 1-3 adjectives of any kind."""
    subject = topic if topic and rng.random() < on_topic else rng.choice([t for t in TOPICS if t != topic])
    adjectives = rng.sample(ADJECTIVES, rng.randint(1, 3))
    described = adjectives[0] if len(adjectives) == 1 else ", ".join(adjectives[:-1]) + " and " + adjectives[-1]
    return f" {subject} are {described}."


def ground_truth_score(prompt: str, response: str) -> float:
    """The hidden rule. Never shown to the reward model; used to measure real improvement."""
    words = _WORD.findall(response.lower())
    on_topic = 1.0 if topic_of(prompt) in words else 0.0
    net = sum(w in PLEASANT for w in words) - sum(w in UNPLEASANT for w in words)
    net = max(-MAX_NET_ADJECTIVES, min(MAX_NET_ADJECTIVES, net))
    return on_topic + 0.5 * net


def ground_truth_rewards(prompts: list[str], responses: list[str]) -> list[float]:
    """The hidden rule as a programmable reward: `rlhf serve reward --function rlhf.toy.synthetic:ground_truth_rewards`
    (a verifiable reward for the synthetic task, in place of a learned reward model)."""
    return [ground_truth_score(p, r) for p, r in zip(prompts, responses, strict=True)]


def noisy_ranking(rng: random.Random, prompt: str, responses: list[str]) -> list[int]:
    """Indices best first, by ground truth plus Gumbel noise (a Plackett-Luce labeller)."""
    noisy = [ground_truth_score(prompt, r) - LABEL_NOISE * _log(-_log(rng.random() or 1e-12)) for r in responses]
    return sorted(range(len(responses)), key=lambda i: -noisy[i])


def _log(x: float) -> float:
    import math

    return math.log(max(x, 1e-12))


def sft_examples(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        rows.append({"prompt": make_prompt(rng, topic), "response": make_response(rng, topic)})
    return rows


def preference_examples(rng: random.Random, n: int, k: int = 4, pairwise_share: float = 0.3) -> list[dict]:
    """K-wise rankings, with a share written in the pairwise chosen/rejected shape."""
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        prompt = make_prompt(rng, topic)
        if rng.random() < pairwise_share:
            pair = [make_response(rng, topic, on_topic=0.5) for _ in range(2)]
            best, worst = noisy_ranking(rng, prompt, pair)
            rows.append({"prompt": prompt, "chosen": pair[best], "rejected": pair[worst]})
        else:
            responses = [make_response(rng, topic, on_topic=0.5) for _ in range(k)]
            rows.append({"prompt": prompt, "responses": responses, "ranking": noisy_ranking(rng, prompt, responses)})
    return rows


def pretraining_text(rng: random.Random, n: int) -> list[dict]:
    places = ["in the morning", "at night", "near the sea", "in the old town", "after the rain", "in spring"]
    rows = []
    for _ in range(n):
        topic, adjective = rng.choice(TOPICS), rng.choice(ADJECTIVES)
        rows.append({"text": f"The {topic} {rng.choice(places)} look {adjective}, and people talk about {topic}."})
    return rows


def write_task(
    out: str | Path, seed: int = 0, scale: float = 1.0, preference_scale: float = 1.0, chat: bool = False
) -> dict[str, Path]:
    """Write the task's JSONL files under out; scale shrinks or grows every file, preference_scale the
    preferences once more (a reward model needs more comparisons than SFT needs demonstrations); chat writes
    the same rows as conversations."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    size = lambda n: max(8, int(n * scale))  # noqa: E731
    files = {
        "sft": sft_examples(rng, size(2000)),
        "preferences": preference_examples(rng, size(1500 * preference_scale)),
        "prompts": [{"prompt": make_prompt(rng)} for _ in range(size(1000))],
        "prompts_eval": [{"prompt": make_prompt(rng)} for _ in range(size(64))],
        "pretrain": pretraining_text(rng, size(1000)),
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = out / f"{name}.jsonl"
        _write_jsonl_atomic(paths[name], [as_chat(row) for row in rows] if chat else rows)
    return paths


def question_of(prompt: str) -> str:
    """The question inside a text prompt ("Human: {q}\nAssistant:")."""
    return prompt.removeprefix("Human: ").removesuffix("\nAssistant:")


def as_chat(row: dict) -> dict:
    """A row of the text form as a conversation: the prompt a user message, each response an assistant one."""
    if "prompt" not in row:
        return row  # pretraining text stays text
    user = [{"role": "user", "content": question_of(row["prompt"])}]
    reply = lambda text: [{"role": "assistant", "content": text.strip()}]  # noqa: E731
    if "response" in row:
        return {"messages": user + reply(row["response"])}
    if "responses" in row:
        return {**row, "prompt": user, "responses": [reply(y) for y in row["responses"]]}
    if "chosen" in row:
        return {"prompt": user, "chosen": reply(row["chosen"]), "rejected": reply(row["rejected"])}
    return {"prompt": user}


def _write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def tokenizer_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Task sentences for training the tiny model's tokenizer (with the bundled English text)."""
    rng = random.Random(seed)
    lines = [row["prompt"] + row["response"] for row in sft_examples(rng, n)]
    lines += [row["text"] for row in pretraining_text(rng, n // 3)]
    return lines


def base_text(seed: int = 0, n: int = 5000) -> list[dict]:
    """Plain text of the task's world, {"text"} rows for `rlhf train sft`: a tiny base pretrained on it knows
    the task's language, as a real base knows its own, before SFT teaches the prompt format. Half are the
    pretraining sentences, half statements like the demonstrations' ("Cats are warm and kind."), no prompts."""
    rng = random.Random(f"base-{seed}")
    rows = pretraining_text(rng, n // 2)
    for _ in range(n - len(rows)):
        rows.append({"text": make_response(rng, rng.choice(TOPICS)).strip().capitalize()})
    rng.shuffle(rows)
    return rows


def write_base_text(path: str | Path, seed: int = 0, n: int = 5000) -> Path:
    """base_text as a JSONL file for `rlhf train sft --data`."""
    path = Path(path)
    _write_jsonl_atomic(path, base_text(seed, n))
    return path

"""SFT: only response tokens count, and training on the synthetic task teaches its responses."""

import json

import pytest
import torch

from rlhf.core.logprobs import response_logprobs
from rlhf.core.text import Encoded
from rlhf.toy.synthetic import topic_of
from rlhf.training.losses import IGNORE
from rlhf.training.sft import SFTConfig, collate, response_loss_sum, train_sft
from rlhf.training.sft_data import load_rows

EXAMPLES = [Encoded([10, 11, 12], [20, 21, 0]), Encoded([13], [22, 0])]


def test_collate_masks_prompt_and_padding_out_of_the_labels():
    batch = collate(EXAMPLES, pad_id=1)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 0], [13, 22, 0, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE, IGNORE, IGNORE, 20, 21, 0],
        [IGNORE, 22, 0, IGNORE, IGNORE, IGNORE],
    ]


def test_loss_is_the_response_tokens_negative_log_likelihood(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        loss, count = response_loss_sum(model, collate(EXAMPLES, pad_id=1))
        logprobs, mask = response_logprobs(
            model, [e.prompt_ids for e in EXAMPLES], [e.response_ids for e in EXAMPLES], pad_id=1
        )
    assert count == 5
    assert loss.item() == pytest.approx(-(logprobs * mask).sum().item(), abs=1e-4)


def test_completion_is_accepted_for_response_and_bad_lines_are_named(tmp_path):
    from rlhf.core.errors import UserError

    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "completion": " b"}\n\n{"prompt": "c", "response": " d"}\n')
    assert load_rows(data) == [("a", " b"), ("c", " d")]
    data.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "c"}\n')
    with pytest.raises(UserError, match=r"sft.jsonl:2: expected"):
        load_rows(data)


def test_a_text_line_is_plain_text_trained_on_every_token_after_the_first(tmp_path, tiny_model_dir):
    from rlhf.core.modeling import load_tokenizer
    from rlhf.training.sft_data import encode_text

    data = tmp_path / "mixed.jsonl"
    data.write_text('{"text": "The cats look warm."}\n{"prompt": "a", "response": " b"}\n')
    pairs = load_rows(data)
    assert pairs == [(None, "The cats look warm."), ("a", " b")]
    tokenizer = load_tokenizer(tiny_model_dir)
    encoded = encode_text(tokenizer, pairs[0][1], max_length=64)
    text_ids = tokenizer("The cats look warm.", add_special_tokens=False)["input_ids"]
    assert encoded.prompt_ids == [] and encoded.response_ids == [*text_ids, tokenizer.eos_token_id]
    # longer than --max-length: the start is kept, as pretraining keeps it
    assert encode_text(tokenizer, pairs[0][1], max_length=3).response_ids == text_ids[:3]
    labels = collate([encoded], pad_id=tokenizer.pad_token_id)["labels"][0]
    # the first token has no context to be predicted from; every later one (and EOS) is a target
    assert (labels[1:] != IGNORE).sum().item() == len(text_ids)
    data.write_text('{"text": 3}\n')
    from rlhf.core.errors import UserError

    with pytest.raises(UserError, match=r'mixed.jsonl:1: expected .*"text" alone'):
        load_rows(data)


@pytest.mark.slow
def test_sft_on_the_synthetic_task_lowers_the_held_out_response_loss(
    tiny_model_dir, synth_dir, tmp_path, seed, record_figures
):
    rows = (synth_dir / "sft.jsonl").read_text().splitlines()[:320]
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(rows) + "\n")
    result = train_sft(
        SFTConfig(
            model=str(tiny_model_dir),
            data=str(data),
            out=str(tmp_path / "sft"),
            lr=2e-3,
            batch_size=16,
            eval_fraction=0.2,
            device="cpu",
            seed=seed,
        ),
        progress=False,
    )
    assert (result.train_examples, result.eval_examples) == (256, 64)
    # The held-out loss falls to at most 0.65 of its start: well above the worst of benchmarks/seed_sweep.py's
    # 5 seeds x 2 CPU kinds (docs/benchmarks.md#seed-sweep), which all land between 0.52 and 0.54.
    ratio = result.eval_loss_after / result.eval_loss_before
    record_figures({"eval_loss_ratio_max": ratio}, {"eval_loss_ratio_max": 0.65})
    assert ratio < 0.65
    assert (tmp_path / "sft" / "config.json").is_file() and (tmp_path / "sft" / "tokenizer.json").is_file()
    assert not (tmp_path / "sft.tmp").exists()


def taught_examples(synth_dir, count: int = 4) -> list[dict]:
    """The first synthetic SFT rows with distinct topics: a small set a tiny model can learn exactly."""
    taught, topics = [], set()
    for line in (synth_dir / "sft.jsonl").read_text().splitlines():
        row = json.loads(line)
        if topic_of(row["prompt"]) not in topics:
            topics.add(topic_of(row["prompt"]))
            taught.append(row)
        if len(taught) == count:
            return taught
    raise AssertionError("not enough distinct topics")

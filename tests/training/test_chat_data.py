"""Conversational SFT and preference rows: loss masks and prompts, tokens checked by hand on the tiny Llama's
ChatML template (<|im_start|> and <|im_end|> are single special tokens; 'Ċ' is the newline)."""

import json

import pytest

from rlhf.core.errors import UserError
from rlhf.core.modeling import load_tokenizer
from rlhf.training.preferences import load_rankings, parse_row, render_rankings
from rlhf.training.sft_data import encode_row, load_rows
from rlhf.training.sft_data import parse_row as parse_sft_row

USER = ["<|im_start|>", "u", "s", "er", "Ċ"]
ASSISTANT = ["<|im_start|>", "a", "ss", "istant", "Ċ"]
END = ["<|im_end|>", "Ċ"]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return load_tokenizer(tiny_llama_dir)


def trained_tokens(tokenizer, example) -> tuple[list[str], list[str]]:
    tokens = tokenizer.convert_ids_to_tokens(example.input_ids)
    return tokens, [t for t, on in zip(tokens, example.trained, strict=True) if on]


def test_messages_train_the_assistant_turns_only_in_a_three_turn_conversation(tokenizer):
    row = parse_sft_row(
        {"messages": [user("Hi"), assistant("Yes"), user("Cats?"), assistant("Warm"), user("Bye"), assistant("Ok")]},
        "f:1",
    )
    tokens, trained = trained_tokens(tokenizer, encode_row(tokenizer, row, 512))
    assert tokens == (
        USER + ["H", "i"] + END + ASSISTANT + ["Y", "es"] + END
        + USER + ["C", "ats", "?"] + END + ASSISTANT + ["W", "arm"] + END
        + USER + ["B", "y", "e"] + END + ASSISTANT + ["O", "k"] + END
    )  # fmt: skip
    assert trained == ["Y", "es", *END, "W", "arm", *END, "O", "k", *END]
    assert trained_tokens(tokenizer, encode_row(tokenizer, row, 512, "completion"))[1] == ["O", "k", *END]
    assert trained_tokens(tokenizer, encode_row(tokenizer, row, 512, "all"))[1] == tokens


def test_prompt_completion_trains_the_completion_and_truncation_keeps_the_end(tokenizer):
    row = parse_sft_row({"prompt": [user("Hi")], "completion": [assistant("Yes")]}, "f:1")
    tokens, trained = trained_tokens(tokenizer, encode_row(tokenizer, row, 512))
    assert tokens == USER + ["H", "i"] + END + ASSISTANT + ["Y", "es"] + END
    assert trained == ["Y", "es", *END]
    assert trained_tokens(tokenizer, encode_row(tokenizer, row, 5)) == (["Ċ", "Y", "es", *END], ["Y", "es", *END])


def test_bad_sft_rows_are_one_line_errors_naming_file_line_and_field(tmp_path):
    data = tmp_path / "chat.jsonl"
    cases = [
        ({"messages": [user("Hi"), {"role": "robot", "content": "x"}]}, r"'messages'\[1\] has unknown role 'robot'"),
        ({"messages": [user("Hi")]}, r"field 'messages' must end with an assistant turn"),
        ({"messages": []}, r"field 'messages' must be a non-empty list"),
        ({"prompt": [user("Hi")], "completion": [user("Yo")]}, r"field 'completion' has no assistant turn"),
    ]
    for row, message in cases:
        data.write_text(json.dumps(row) + "\n")
        with pytest.raises(UserError, match=r"chat.jsonl:1: .*" + message):
            load_rows(data)
    data.write_text(json.dumps({"messages": [user("Hi"), assistant("Yo")]}) + '\n{"prompt": "a", "response": "b"}\n')
    with pytest.raises(UserError, match=r"chat.jsonl:2: standard \(string\) and conversational .* mixed"):
        load_rows(data)


def test_an_implicit_prompt_is_the_shared_start_of_chosen_and_rejected(tokenizer):
    history = [user("Hi"), assistant("Yes"), user("Cats?")]
    ranking = parse_row({"chosen": [*history, assistant("Warm")], "rejected": [*history, assistant("Cold")]}, "f:1")
    assert ranking.prompt == (("user", "Hi"), ("assistant", "Yes"), ("user", "Cats?"))
    assert ranking.responses == ((("assistant", "Warm"),), (("assistant", "Cold"),))
    [rendered] = render_rankings([ranking], tokenizer)
    prompt = tokenizer.convert_ids_to_tokens(tokenizer(rendered.prompt)["input_ids"])
    assert (
        prompt == USER + ["H", "i"] + END + ASSISTANT + ["Y", "es"] + END + USER + ["C", "ats", "?"] + END + ASSISTANT
    )
    assert rendered.responses == ("Warm<|im_end|>\n", "Cold<|im_end|>\n")
    assert rendered.comparisons() == [(0, 1)]
    with pytest.raises(UserError, match=r"f:2: 'chosen' and 'rejected' must share a prompt"):
        parse_row({"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("b")]}, "f:2")


def test_a_kwise_conversational_ranking_expands_to_its_pairs(tokenizer):
    row = {
        "prompt": [user("Hi")],
        "responses": [[assistant("A")], [assistant("B")], [assistant("C")]],
        "ranking": [2, 0, 1],
    }
    [ranking] = render_rankings([parse_row(row, "f:1")], tokenizer)
    assert ranking.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert ranking.responses == ("A<|im_end|>\n", "B<|im_end|>\n", "C<|im_end|>\n")
    assert ranking.comparisons() == [(2, 0), (2, 1), (0, 1)]  # C(3, 2) = 3: C > A, C > B, A > B
    with pytest.raises(UserError, match=r"f:1: field 'responses\[1\]'\[0\] has unknown role"):
        parse_row({**row, "responses": [[assistant("A")], [{"role": "x", "content": "B"}], [assistant("C")]]}, "f:1")


def test_a_file_mixing_standard_and_conversational_preferences_is_refused(tmp_path):
    data = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": [user("Hi")], "chosen": [assistant("A")], "rejected": [assistant("B")]},
        {"prompt": "Hi", "chosen": "A", "rejected": "B"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match=r"prefs.jsonl:2: standard \(string\) and conversational .* mixed"):
        load_rankings(str(data))
    data.write_text(json.dumps(rows[1]) + "\n")
    assert load_rankings(str(data))[0].prompt == "Hi"  # the standard form, unchanged


def test_the_synthetic_task_written_as_conversations_reads_in_every_stage(tmp_path, tokenizer):
    from rlhf.learner.data import ChatPrompt, load_prompts
    from rlhf.toy.synthetic import write_task

    paths = write_task(tmp_path, scale=0.01, chat=True)
    rows = load_rows(paths["sft"])
    assert rows[0].messages[0][0] == "user" and rows[0].messages[-1][0] == "assistant"
    rankings = render_rankings(load_rankings(str(paths["preferences"])), tokenizer)
    assert all(r.prompt.endswith("<|im_start|>assistant\n") for r in rankings)
    assert all(y.endswith("<|im_end|>\n") for r in rankings for y in r.responses)
    prompts = load_prompts(str(paths["prompts"]), tokenizer, max_prompt_tokens=100)
    assert all(isinstance(p, ChatPrompt) and p.startswith("<|im_start|>user\n") for p in prompts)


def test_bad_conversations_stop_the_cli_in_one_line(tiny_llama_dir, tmp_path):
    import subprocess

    from tests.helpers import RLHF

    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [user("Hi"), assistant("Yo")]}) + "\n")
    data.write_text(data.read_text() + json.dumps({"messages": [user("Hi"), {"role": "bot", "content": "x"}]}) + "\n")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": [user("Hi")], "chosen": [assistant("A")], "rejected": [assistant("B")]}))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{{ raise_exception('no such role here') }}")
    cases = [
        (["sft", "--data", str(data)], f"{data}:2: field 'messages'[1] has unknown role 'bot'"),
        (["rm", "--data", str(prefs), "--eval-fraction", "0", "--chat-template", str(broken)], "failed to render"),
    ]
    for args, message in cases:
        out = subprocess.run(
            [*RLHF, "train", *args, "--model", str(tiny_llama_dir), "--out", str(tmp_path / "out"), "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr

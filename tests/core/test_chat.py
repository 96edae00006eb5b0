"""Conversations: checked messages, rendered with the model's own template or --chat-template's."""

import pytest

from rlhf.core.chat import message_spans, parse_conversation, render, render_completion, use_chat_template
from rlhf.core.errors import UserError
from rlhf.core.modeling import load_tokenizer

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return load_tokenizer(tiny_llama_dir)


def test_bad_messages_are_one_line_errors_naming_row_field_and_message():
    assert parse_conversation(CHAT, "f:1", "messages") == (("user", "Hi"), ("assistant", "Hello!"))
    with pytest.raises(UserError, match=r"^f:3: field 'messages'\[1\] has unknown role 'bot'"):
        parse_conversation([CHAT[0], {"role": "bot", "content": "x"}], "f:3", "messages")
    with pytest.raises(UserError, match=r"^f:2: field 'prompt' must be a non-empty list of messages$"):
        parse_conversation([], "f:2", "prompt")
    with pytest.raises(UserError, match=r"^f:2: field 'chosen'\[0\] must be an object with string"):
        parse_conversation([{"role": "user", "content": 3}], "f:2", "chosen")


def test_the_generation_prompt_opens_the_assistant_turn(tokenizer):
    prompt = (("system", "Be brief."), ("user", "Hi"))
    text = render(tokenizer, prompt, generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert tokens[:1] == ["<|im_start|>"] and tokens[-4:] == ["a", "ss", "istant", "Ċ"]
    assert tokens.count("<|im_end|>") == 2  # one special token per turn end
    head, reply = render_completion(tokenizer, prompt, (("assistant", "Yo"),))
    assert (head, reply) == (text, "Yo<|im_end|>\n")


def test_an_assistant_span_runs_from_after_its_header_to_its_turn_end(tokenizer):
    text, spans = message_spans(tokenizer, (("user", "Hi"), ("assistant", "Hello!")))
    assert [text[a:b] for a, b in spans] == ["<|im_start|>user\nHi<|im_end|>\n", "Hello!<|im_end|>\n"]


def test_no_template_names_the_flag_and_a_broken_one_is_one_line(tiny_llama_dir, tmp_path):
    bare = load_tokenizer(tiny_llama_dir)
    bare.chat_template = None
    with pytest.raises(UserError, match=r"^d.jsonl:4: the model's tokenizer has no chat template; .*--chat-template"):
        render(bare, (("user", "Hi"),), where="d.jsonl:4")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert render(use_chat_template(bare, template), (("user", "Hi"),)) == "[user] Hi\n"
    template.write_text("{{ raise_exception('no system messages') }}")
    with pytest.raises(UserError, match=r"^d.jsonl:5: the chat template failed to render: no system messages$"):
        render(use_chat_template(bare, template), (("user", "Hi"),), where="d.jsonl:5")
    with pytest.raises(UserError, match=r"cannot read --chat-template"):
        use_chat_template(bare, tmp_path / "missing.jinja")

"""Conversational RL prompts: rendered with the policy's template and a generation prompt; the reward services
are sent the messages."""

import json
import pickle

import pytest

from rlhf.core.errors import UserError
from rlhf.core.modeling import load_tokenizer
from rlhf.learner.data import ChatPrompt, load_prompts, reward_prompt


def test_a_conversation_prompt_is_rendered_with_the_generation_prompt(tiny_llama_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_llama_dir)
    data = tmp_path / "prompts.jsonl"
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yes"},
        {"role": "user", "content": "Cats?"},
    ]
    data.write_text(json.dumps({"prompt": history}) + "\n")
    [prompt] = load_prompts(str(data), tokenizer, max_prompt_tokens=100)
    assert prompt == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n"
        "<|im_start|>user\nCats?<|im_end|>\n<|im_start|>assistant\n"
    )
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])
    assert tokens[-5:] == ["<|im_start|>", "a", "ss", "istant", "Ċ"]
    assert reward_prompt(prompt) == (("user", "Hi"), ("assistant", "Yes"), ("user", "Cats?"))
    assert reward_prompt("plain") == "plain"
    copy = pickle.loads(pickle.dumps(prompt))  # crosses processes (torchrun ranks) intact
    assert isinstance(copy, ChatPrompt) and copy.messages == prompt.messages
    data.write_text(json.dumps({"prompt": history}) + "\n" + json.dumps({"prompt": "text"}) + "\n")
    with pytest.raises(UserError, match=r"prompts.jsonl:2: text and conversational .* mixed"):
        load_prompts(str(data), tokenizer, max_prompt_tokens=100)
    data.write_text(json.dumps({"prompt": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(UserError, match=r"prompts.jsonl:1: field 'prompt'\[0\] has unknown role 'bot'"):
        load_prompts(str(data), tokenizer, max_prompt_tokens=100)

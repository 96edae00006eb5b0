"""Conversations through the services as processes: the reward service renders a conversation with its own
template (scores equal the in-process model's on that rendering), the policy service with its own and a
generation prompt; bad conversations are INVALID_ARGUMENT and the servers keep serving."""

from __future__ import annotations

import json
import subprocess
from contextlib import ExitStack

import grpc
import pytest
import torch

from rlhf.core.chat import render
from rlhf.core.modeling import load_tokenizer
from rlhf.core.types import GenerationParams
from rlhf.policy import PolicyClient
from rlhf.reward import RewardClient
from rlhf.reward.local import LocalReward
from rlhf.v1 import common_pb2, policy_pb2, reward_pb2
from tests.helpers import RLHF, CliServer, hang_guard

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about cats."},
    {"role": "assistant", "content": "Cats purr."},
    {"role": "user", "content": "And dogs?"},
]


@pytest.fixture(scope="module")
def llama_reward_dir(tiny_llama_dir, tmp_path_factory):
    from rlhf.core.reward_model import load_sequence_classifier

    torch.manual_seed(0)
    tokenizer = load_tokenizer(tiny_llama_dir)
    model = load_sequence_classifier(tiny_llama_dir, tokenizer, torch.device("cpu"), torch.float32)
    out = tmp_path_factory.mktemp("models") / "llama-rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reward_server(llama_reward_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "reward.log"
    with CliServer(["serve", "reward", "--model", str(llama_reward_dir), "--device", "cpu"], log_path=log) as proc:
        yield proc


def test_the_reward_service_scores_a_conversation_as_the_in_process_model_on_its_own_rendering(
    reward_server, llama_reward_dir
):
    local = LocalReward(str(llama_reward_dir), device="cpu")
    with RewardClient(reward_server.target) as client:
        served = client.score([(HISTORY, "Dogs bark."), ("plain text", "Dogs bark.")])
    tokenizer = load_tokenizer(llama_reward_dir)
    rendered = render(tokenizer, [(m["role"], m["content"]) for m in HISTORY], generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nAnd dogs?<|im_end|>\n<|im_start|>assistant\n")
    expected = local.scorer.score([(rendered, "Dogs bark.<|im_end|>\n"), ("plain text", "Dogs bark.")])
    assert served == pytest.approx(expected, abs=1e-5)
    assert local.score([(HISTORY, "Dogs bark.")]) == pytest.approx(expected[:1], abs=1e-5)
    assert served[0] != pytest.approx(served[1], abs=1e-6)  # the conversation was rendered, not dropped


def test_bad_conversations_are_invalid_argument_and_the_service_keeps_serving(reward_server):
    messages = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="robot", content="hi")])
    both = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="user", content="hi")])
    with grpc.insecure_channel(reward_server.target) as channel:
        score = channel.unary_unary(
            "/rlhf.v1.RewardScoring/Score",
            request_serializer=reward_pb2.ScoreRequest.SerializeToString,
            response_deserializer=reward_pb2.ScoreResponse.FromString,
        )
        for item, message in [
            (reward_pb2.ScoreItem(prompt_messages=messages, response="x"), "unknown role 'robot'"),
            (reward_pb2.ScoreItem(prompt="p", prompt_messages=both, response="x"), "not both"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                score(reward_pb2.ScoreRequest(items=[item]), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        assert len(score(reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt="p", response="x")])).scores) == 1


def test_rlhf_score_messages_file(reward_server, tmp_path):
    messages = tmp_path / "conversation.json"
    messages.write_text(json.dumps(HISTORY))
    out = subprocess.run(
        [*RLHF, "score", "--target", reward_server.target, "--messages", str(messages), "--response", "Dogs bark."],
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
    )
    assert out.returncode == 0, out.stderr
    with RewardClient(reward_server.target) as client:
        assert float(out.stdout) == pytest.approx(client.score([(HISTORY, "Dogs bark.")])[0], abs=1e-5)
    messages.write_text(json.dumps([{"role": "bot", "content": "x"}]))
    out = subprocess.run(
        [*RLHF, "score", "--target", reward_server.target, "--messages", str(messages), "--response", "x"],
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
    )
    assert out.returncode == 2 and "field 'messages'[0] has unknown role 'bot'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_reward_function_gets_the_messages_when_it_asks(tmp_path):
    log = tmp_path / "fn.log"
    with (
        CliServer(["serve", "reward", "--function", "tests.reward.chat_functions:turns"], log_path=log) as proc,
        RewardClient(proc.target) as client,
    ):
        assert client.score([(HISTORY, "x"), ("text", "x")]) == [4.5, -1.0]


def test_the_policy_renders_a_conversation_with_its_template_and_a_generation_prompt(tiny_llama_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_llama_dir)
    expected = tokenizer(render(tokenizer, [(m["role"], m["content"]) for m in HISTORY], generation_prompt=True))
    conversation = common_pb2.Conversation(messages=[common_pb2.ChatMessage(**m) for m in HISTORY])
    args = ["serve", "policy", "--model", str(tiny_llama_dir), "--device", "cpu"]
    with CliServer(args, log_path=tmp_path / "policy.log") as proc, grpc.insecure_channel(proc.target) as channel:
        generate = channel.unary_unary(
            "/rlhf.v1.PolicyInference/Generate",
            request_serializer=policy_pb2.GenerateRequest.SerializeToString,
            response_deserializer=policy_pb2.GenerateResponse.FromString,
        )
        params = policy_pb2.SamplingParams(max_new_tokens=4, seed=1)
        reply = generate(policy_pb2.GenerateRequest(prompts=[policy_pb2.Prompt(messages=conversation)], params=params))
        assert list(reply.samples[0].prompt_token_ids) == expected["input_ids"]
        bad = common_pb2.Conversation(messages=[common_pb2.ChatMessage(role="robot", content="x")])
        with pytest.raises(grpc.RpcError) as err:
            generate(policy_pb2.GenerateRequest(prompts=[policy_pb2.Prompt(messages=bad)], params=params), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown role" in err.value.details()
        with PolicyClient(proc.target) as client:  # still serving
            assert len(client.generate(["hi"], GenerationParams(max_new_tokens=2))) == 1


def test_policy_and_reward_with_different_templates_each_render_their_own(tiny_llama_dir, reward_model_dir, tmp_path):
    """The learner's path: a conversational prompt rendered with the policy's template (the tiny Llama's, with
    <|im_end|>) is generated from, and the reward service (the tiny GPT-2's, whose turns end with EOS) is sent
    the messages and scores its own rendering, as the same reward model does in-process on that rendering."""
    from rlhf.learner.data import read_prompts, reward_prompt

    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"prompt": HISTORY}) + "\n")
    [prompt] = read_prompts(str(prompts_file), load_tokenizer(tiny_llama_dir))
    reward_tokenizer = load_tokenizer(reward_model_dir)
    own = render(reward_tokenizer, reward_prompt(prompt), generation_prompt=True)
    assert "<|im_end|>" in prompt and "<|im_end|>" not in own and own.endswith("<|im_start|>assistant\n")
    with ExitStack() as stack:
        policy = stack.enter_context(
            CliServer(["serve", "policy", "--model", str(tiny_llama_dir), "--device", "cpu"], log_path=tmp_path / "p")
        )
        reward = stack.enter_context(
            CliServer(["serve", "reward", "--model", str(reward_model_dir), "--device", "cpu"], log_path=tmp_path / "r")
        )
        [sample] = stack.enter_context(PolicyClient(policy.target)).generate(
            [prompt], GenerationParams(max_new_tokens=6, seed=3)
        )
        served = stack.enter_context(RewardClient(reward.target)).score([(reward_prompt(prompt), sample.response_text)])
    assert sample.prompt_token_ids == load_tokenizer(tiny_llama_dir)(str(prompt))["input_ids"]
    local = LocalReward(str(reward_model_dir), device="cpu")
    reply = sample.response_text + reward_tokenizer.eos_token + "\n"  # the GPT-2 template closes a turn with EOS
    assert served == pytest.approx(local.scorer.score([(own, reply)]), abs=1e-5)

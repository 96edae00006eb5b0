"""Between the wire messages (rlhf.v1 SamplingParams, Sample) and the shared dataclasses."""

from __future__ import annotations

from collections.abc import Sequence

from rlhf.core.chat import checked_request_messages, render, render_for_request
from rlhf.core.types import GenerationParams, Sample
from rlhf.v1 import common_pb2, policy_pb2

DEFAULTS = GenerationParams()


def params_to_proto(params: GenerationParams) -> policy_pb2.SamplingParams:
    return policy_pb2.SamplingParams(
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        seed=params.seed,
        n=params.n,
        ignore_eos=params.ignore_eos,
        min_new_tokens=params.min_new_tokens,
    )


def params_from_proto(message: policy_pb2.SamplingParams) -> GenerationParams:
    """Unset optional fields take the GenerationParams defaults; n == 0 means 1."""
    has = message.HasField
    return GenerationParams(
        max_new_tokens=message.max_new_tokens if has("max_new_tokens") else DEFAULTS.max_new_tokens,
        temperature=message.temperature if has("temperature") else DEFAULTS.temperature,
        top_p=message.top_p if has("top_p") else DEFAULTS.top_p,
        top_k=message.top_k,
        seed=message.seed if has("seed") else None,
        n=message.n or 1,
        ignore_eos=message.ignore_eos,
        min_new_tokens=message.min_new_tokens,
    )


def prompts_to_proto(prompts: Sequence[str | Sequence[int]]) -> list[policy_pb2.Prompt]:
    return [
        policy_pb2.Prompt(text=p) if isinstance(p, str) else policy_pb2.Prompt(token_ids=common_pb2.TokenIds(ids=p))
        for p in prompts
    ]


def prompts_from_proto(messages: Sequence[policy_pb2.Prompt], tokenizer) -> list[str | list[int]]:
    """Text or ids; a conversation becomes the text the tokenizer's chat template writes for it, with the
    generation prompt; a prompt with nothing set becomes an empty text (refused later as empty). Raises
    InvalidRequest for a bad conversation or a template that cannot render it."""
    return [prompt_from_proto(m, tokenizer, f"prompt {i}") for i, m in enumerate(messages)]


def prompt_from_proto(message: policy_pb2.Prompt, tokenizer, what: str) -> str | list[int]:
    kind = message.WhichOneof("prompt")
    if kind == "token_ids":
        return list(message.token_ids.ids)
    if kind == "messages":
        conversation = checked_request_messages(message.messages.messages, what)
        return render_for_request(tokenizer, lambda t: render(t, conversation, generation_prompt=True), what)
    return message.text


def sample_to_proto(sample: Sample) -> policy_pb2.Sample:
    return policy_pb2.Sample(
        response_text=sample.response_text,
        prompt_token_ids=sample.prompt_token_ids,
        response_token_ids=sample.response_token_ids,
        logprobs=sample.logprobs,
        finish_reason=sample.finish_reason,
        weights_version=sample.weights_version,
        prompt_index=sample.prompt_index,
    )


def sample_from_proto(message: policy_pb2.Sample) -> Sample:
    return Sample(
        prompt_token_ids=list(message.prompt_token_ids),
        response_token_ids=list(message.response_token_ids),
        logprobs=list(message.logprobs),
        finish_reason=message.finish_reason,
        weights_version=message.weights_version,
        response_text=message.response_text,
        prompt_index=message.prompt_index,
    )

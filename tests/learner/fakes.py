"""Minimal in-process services for the loop's unit tests (the acceptance tests use real servers).

Real tiny models, no network: FakePolicy samples with transformers' generate, FakeReference
scores ids with the shared log-prob code, and the reward is any callable on (prompt, response).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import torch
from transformers import AutoModelForCausalLM

from rlhf.core.logprobs import response_logprobs_list
from rlhf.core.modeling import load_tokenizer, tokenizer_fingerprint
from rlhf.core.text import encode_prompt
from rlhf.core.types import GenerationParams, Sample
from rlhf.v1 import common_pb2


class FakePolicy:
    seed_lock = threading.Lock()  # generate() reseeds torch's global RNG; replicas run in threads

    def __init__(self, model_dir, tokenizer=None):
        self.tokenizer = tokenizer or load_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.version = 0
        self.generate_calls = 0
        self.serve_stale = 0  # how many next generate calls pretend to run on version 0 weights

    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[Sample]:
        self.generate_calls += 1
        tok = self.tokenizer
        samples = []
        for index, prompt in enumerate(prompts):
            ids = encode_prompt(tok, prompt)
            with self.seed_lock, torch.no_grad():
                torch.manual_seed((params.seed or 0) + index)
                out = self.model.generate(
                    torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=True,
                    top_k=0, max_new_tokens=params.max_new_tokens, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
                response = out[0, len(ids):].tolist()
                logprobs = response_logprobs_list(self.model, [ids], [response], tok.pad_token_id)[0]
            finished = response[-1] == tok.eos_token_id
            version = 0 if self.serve_stale else self.version
            samples.append(Sample(ids, response, logprobs, "eos" if finished else "length", version,
                                  tok.decode(response, skip_special_tokens=True), index))
        self.serve_stale = max(0, self.serve_stale - 1)
        return samples

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    def model_info(self) -> common_pb2.ModelInfo:
        fingerprint = tokenizer_fingerprint(self.tokenizer)
        return common_pb2.ModelInfo(weights_version=self.version, tokenizer_fingerprint=fingerprint)


class FakeReference:
    def __init__(self, model_dir, fingerprint: str | None = None):
        self.tokenizer = load_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.fingerprint = fingerprint or tokenizer_fingerprint(self.tokenizer)

    def logprobs(self, items: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[float]]:
        with torch.no_grad():
            return response_logprobs_list(self.model, *zip(*items, strict=True), self.tokenizer.pad_token_id)

    def model_info(self) -> common_pb2.ModelInfo:
        return common_pb2.ModelInfo(tokenizer_fingerprint=self.fingerprint)


class CallableReward:
    """Any function of (prompt, response) as the reward service."""

    def __init__(self, fn: Callable[[str, str], float]):
        self.fn = fn

    def score(self, items: Sequence[tuple[str, str]]) -> list[float]:
        return [self.fn(prompt, response) for prompt, response in items]

    def model_info(self) -> common_pb2.ModelInfo:
        return common_pb2.ModelInfo()

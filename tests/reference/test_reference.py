"""ReferencePolicy on real loopback servers: agreement with the policy, batching, refusals, the CLI."""

import json
import subprocess
import threading

import grpc
import pytest
from prometheus_client import REGISTRY

from rlhf.core.modeling import load_tokenizer
from rlhf.core.server import ServerOptions, ServerThread
from rlhf.core.text import encode_prompt, encode_response
from rlhf.core.types import GenerationParams
from rlhf.policy.client import PolicyClient
from rlhf.policy.service import PolicyService, PolicyServiceConfig
from rlhf.reference.client import ReferenceClient
from rlhf.reference.local import LocalReference
from rlhf.reference.service import ReferenceService, ReferenceServiceConfig
from tests.helpers import RLHF, CliServer


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    service = ReferenceService(ReferenceServiceConfig(model=str(tiny_model_dir), device="cpu", max_wait_ms=100))
    with ServerThread(service, ServerOptions(port=0)) as port, ReferenceClient(f"127.0.0.1:{port}") as client:
        yield client


def test_logprobs_equal_the_policys_for_the_same_model(reference, tiny_model_dir):
    service = PolicyService(PolicyServiceConfig(model=str(tiny_model_dir), device="cpu"))
    with ServerThread(service, ServerOptions(port=0)) as port, PolicyClient(f"127.0.0.1:{port}") as policy:
        samples = policy.generate(
            ["Human: Describe cats.\nAssistant:", [5, 6, 7, 8]],
            GenerationParams(max_new_tokens=16, temperature=0.9, seed=1, n=3),
        )
        assert policy.model_info().tokenizer_fingerprint == reference.model_info().tokenizer_fingerprint
    got = reference.logprobs([(s.prompt_token_ids, s.response_token_ids) for s in samples])
    for sample, logprobs in zip(samples, got, strict=True):
        assert len(logprobs) == len(sample.response_token_ids)
        assert max(abs(a - b) for a, b in zip(logprobs, sample.logprobs, strict=True)) <= 1e-5


def test_concurrent_clients_share_batches_and_get_their_own_answers(reference, tiny_model_dir):
    local = LocalReference(tiny_model_dir, device="cpu")
    requests = [[([5 + i] * (i + 1), [9, 10 + i, 11][: 1 + i % 3])] for i in range(6)]
    count = lambda: REGISTRY.get_sample_value("rlhf_batch_size_count", {"service": "reference"}) or 0  # noqa: E731
    before = count()
    results = {}
    threads = [
        threading.Thread(target=lambda i=i: results.update({i: reference.logprobs(requests[i])})) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count() - before < 6
    for i, items in enumerate(requests):
        assert results[i][0] == pytest.approx(local.logprobs(items)[0], abs=1e-5)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "empty batch"),
        ([([5, 6], [1024])], "item 0: response_token_ids: token id 1024 is outside the vocabulary"),
        ([([5, 6], [7]), ([-2], [7])], "item 1: prompt_token_ids: token id -2 is outside the vocabulary"),
        ([([], [7])], "item 0: prompt_token_ids is empty"),
        ([([5], [])], "item 0: response_token_ids is empty"),
        ([([5] * 200, [6] * 57)], "257 tokens, beyond the model context of 256"),
        ([([5], [6])] * 1025, "over the limit of 1024"),
    ],
)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(reference, items, message):
    with pytest.raises(grpc.RpcError) as info:
        reference.logprobs(items)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert len(reference.logprobs([([5, 6], [7, 8])])[0]) == 2


def test_cli_serves_and_answers_logprobs(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    prompt, response = "Human: Describe cats.\nAssistant:", " cats are kind."
    expected = LocalReference(tiny_model_dir, device="cpu").logprobs(
        [(encode_prompt(tokenizer, prompt), encode_response(tokenizer, response))]
    )[0]
    with CliServer(
        ["serve", "reference", "--model", str(tiny_model_dir), "--device", "cpu"], log_path=tmp_path / "reference.log"
    ) as server:
        command = [
            *RLHF,
            "logprobs",
            "--target",
            server.target,
            "--tokenizer",
            str(tiny_model_dir),
            "--prompt",
            prompt,
            "--response",
            response,
        ]
        out = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
        table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert out["prompt_token_ids"] == encode_prompt(tokenizer, prompt)
    assert out["response_token_ids"][-1] == tokenizer.eos_token_id
    assert out["logprobs"] == pytest.approx(expected, abs=1e-5)
    total, rest = table.splitlines()[-1].split(maxsplit=1)
    assert float(total) == pytest.approx(sum(expected), abs=1e-3) and rest == f"total over {len(expected)} tokens"

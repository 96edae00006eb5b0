"""`rlhf serve reward` as a separate process: reflection clients, batching, bad input, the CLI client, SIGTERM."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from rlhf.reward import RewardClient
from rlhf.reward.local import LocalReward
from rlhf.toy.processes import free_port
from rlhf.v1 import reward_pb2
from tests.helpers import RLHF, CliServer, hang_guard

PROMPT = "Human: Tell me about cats.\nAssistant:"
MAX_ITEMS = 8


@pytest.fixture(scope="module")
def server(reward_model_dir, tmp_path_factory):
    metrics_port = free_port()
    log = tmp_path_factory.mktemp("logs") / "reward.log"
    args = [
        "serve",
        "reward",
        "--model",
        str(reward_model_dir),
        "--device",
        "cpu",
        "--metrics-port",
        str(metrics_port),
        "--max-items-per-request",
        str(MAX_ITEMS),
        "--max-message-mb",
        "1",
        "--max-wait-ms",
        "25",
    ]
    with CliServer(args, log_path=log) as process:
        process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield process


def _metrics(url: str) -> dict[str, float]:
    """Every sample as `name{label=value,...}` -> value, for the reward service's series."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def _reflected_score_call(channel: grpc.Channel):
    """Score, discovered through server reflection: no project stubs, dynamic messages only."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName("rlhf.v1.RewardScoring").FindMethodByName("Score")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/rlhf.v1.RewardScoring/Score",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return call, request_class


def test_reflection_client_scores_without_project_stubs(server, reward_model_dir):
    with grpc.insecure_channel(server.target) as channel:
        call, request_class = _reflected_score_call(channel)
        request = request_class()
        for response in (" cats are kind.", " dogs are rude and dull."):
            item = request.items.add()
            item.prompt, item.response = PROMPT, response
        reply = call(request, timeout=30)
    assert len(reply.scores) == 2 and reply.model_version
    assert type(reply).__module__ != "rlhf.v1.reward_pb2"
    expected = LocalReward(str(reward_model_dir), device="cpu").score(
        [(PROMPT, " cats are kind."), (PROMPT, " dogs are rude and dull.")]
    )
    assert list(reply.scores) == pytest.approx(expected, abs=1e-4)
    assert reply.scores[0] != reply.scores[1]


def test_model_info_describes_the_served_model(server):
    with RewardClient(server.target) as client:
        info = client.model_info()
    assert info.max_items_per_request == MAX_ITEMS and info.max_batch_size == 64
    assert info.max_context == 256 and info.dtype == "float32" and info.device == "cpu"
    assert info.parameter_count > 100_000 and len(info.tokenizer_fingerprint) == 64 and info.model_version


def test_concurrent_clients_are_batched_together(server):
    before = _metrics(server.metrics_url)
    clients = [RewardClient(server.target) for _ in range(12)]
    start = threading.Barrier(len(clients))
    results: list[float] = []

    def one(client, i):
        start.wait()
        results.extend(client.score([(PROMPT, f" cats are kind number {i}.")]))

    threads = [threading.Thread(target=one, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    after = _metrics(server.metrics_url)
    assert len(results) == len(clients)
    key = "rlhf_batch_size_{}{{service=reward}}"
    items = after[key.format("sum")] - before.get(key.format("sum"), 0)
    batches = after[key.format("count")] - before.get(key.format("count"), 0)
    single = after["rlhf_batch_size_bucket{le=1.0,service=reward}"] - before.get(
        "rlhf_batch_size_bucket{le=1.0,service=reward}", 0
    )
    assert items == len(clients)
    assert batches < len(clients) and single < batches, f"{items} items in {batches} batches, {single} of size 1"


def _expect(code: grpc.StatusCode, call, *args):
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def test_bad_requests_get_clear_statuses_and_the_server_keeps_serving(server):
    with RewardClient(server.target) as client:
        score = lambda request: client.stub.Score(request, timeout=30)  # noqa: E731
        item = reward_pb2.ScoreItem(prompt=PROMPT, response=" cats are kind.")
        assert "empty" in _expect(grpc.StatusCode.INVALID_ARGUMENT, score, reward_pb2.ScoreRequest())
        details = _expect(grpc.StatusCode.INVALID_ARGUMENT, score, reward_pb2.ScoreRequest(items=[item] * 9))
        assert f"limit of {MAX_ITEMS} items" in details
        huge = reward_pb2.ScoreItem(prompt="x" * (2 * 1024 * 1024), response=" cats.")
        _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, score, reward_pb2.ScoreRequest(items=[huge]))
        with grpc.insecure_channel(server.target) as channel:  # a prompt that is not UTF-8: a decode error
            raw = channel.unary_unary("/rlhf.v1.RewardScoring/Score")
            assert "bad UTF-8" in _expect(grpc.StatusCode.INVALID_ARGUMENT, raw, b"\x0a\x03\x0a\x01\xff", 30)
        assert len(score(reward_pb2.ScoreRequest(items=[item])).scores) == 1


def test_over_long_text_is_truncated_and_counted(server):
    key = "rlhf_truncated_inputs_total{service=reward}"
    before = _metrics(server.metrics_url).get(key, 0)
    long_prompt = "Human: " + "tell me a story about the sea and the old lighthouse keeper. " * 40 + "\nAssistant:"
    with RewardClient(server.target) as client:
        reply = client.score_detailed(
            [(long_prompt, " cats are kind."), (PROMPT, " cats are kind."), (PROMPT, " and " * 600)]
        )
    assert list(reply.truncated) == [True, False, True]
    assert len(reply.scores) == 3
    assert _metrics(server.metrics_url)[key] - before == 2


def test_client_splits_requests_over_the_servers_item_limit(server, reward_model_dir):
    items = [(PROMPT, f" cats are {w}.") for w in ("kind", "dull", "warm", "sad", "big") * 4]  # 20 > 8 items
    with RewardClient(server.target) as client:
        scores = client.score(items)
    assert scores == pytest.approx(LocalReward(str(reward_model_dir), device="cpu").score(items), abs=1e-4)


def test_score_cli_single_pair_and_jsonl(server, tmp_path):
    out = subprocess.run(
        [*RLHF, "score", "--target", server.target, "--prompt", PROMPT, "--response", " cats."],
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
    )
    assert out.returncode == 0, out.stderr
    single = float(out.stdout)
    rows = [{"prompt": PROMPT, "response": " cats.", "id": 1}, {"prompt": PROMPT, "response": " dogs.", "id": 2}]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run(
        [*RLHF, "score", "--target", server.target, "--input", str(path)],
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["id"] for line in lines] == [1, 2]
    assert lines[0]["score"] == pytest.approx(single, abs=1e-5)


def test_score_cli_bad_target_is_one_line():
    out = subprocess.run(
        [*RLHF, "score", "--target", f"127.0.0.1:{free_port()}", "--prompt", "p", "--response", "r", "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=hang_guard(600),
    )
    assert out.returncode == 2
    assert out.stderr.startswith("rlhf: error: 127.0.0.1:") and "UNAVAILABLE" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_sigterm_finishes_in_flight_requests_then_exits_zero(reward_model_dir, tmp_path):
    # A 5 s batching window keeps the request in flight while the signal arrives (0.5 s in). A first
    # call opens the connection, so on a loaded machine too the second one is at the server by then.
    args = ["serve", "reward", "--model", str(reward_model_dir), "--device", "cpu", "--max-wait-ms", "5000"]
    process = CliServer(args, log_path=tmp_path / "reward.log").start()
    try:
        with RewardClient(process.target) as client:
            client.model_info()
            request = reward_pb2.ScoreRequest(items=[reward_pb2.ScoreItem(prompt=PROMPT, response=" cats.")])
            pending = client.stub.Score.future(request, timeout=30)
            time.sleep(0.5)
            process.proc.send_signal(15)
            assert len(pending.result().scores) == 1
        assert process.proc.wait(30) == 0, process.logs()
    finally:
        process.kill()

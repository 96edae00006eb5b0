"""The PPO loop against in-process services on the tiny model: logs, checkpoints, resume, versions.

The policy and reference are the packages' local twins (LocalPolicy, LocalReference); the reward
is the synthetic task's ground-truth rule, as a plain function.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import threading

import grpc
import pytest
import torch

from rlhf.core.errors import UserError
from rlhf.core.flags import add_config_arguments, config_from_args, field_docs
from rlhf.core.server import ServerOptions, ServerThread
from rlhf.learner.client import LearnerClient
from rlhf.learner.config import PPOConfig
from rlhf.learner.control import LearnerControl
from rlhf.learner.loop import train
from rlhf.learner.replicas import Services, name_of
from rlhf.learner.service import LearnerService
from rlhf.policy.local import LocalPolicy
from rlhf.reference.local import LocalReference
from rlhf.toy.synthetic import ground_truth_score
from rlhf.toy.tiny import TinyModelConfig, make_tiny_model
from tests.helpers import hang_guard
from tests.learner.inprocess import CallableReward, RestartingReplica

REQUIRED_METRICS = [
    "objective/reward",
    "objective/kl",
    "objective/entropy",
    "policy/clipfrac",
    "policy/approxkl",
    "loss/policy",
    "loss/value",
    "loss/ptx",
    "val/explained_variance",
    "time/generate",
    "time/score",
    "time/reference",
    "time/update",
    "time/weight_sync",
]


def make_config(tiny_model_dir, synth_dir, out, **overrides) -> PPOConfig:
    settings = dict(
        model=str(tiny_model_dir),
        policy="in-process",
        reward="in-process",
        reference="in-process",
        prompts=str(synth_dir / "prompts.jsonl"),
        out=str(out),
        steps=3,
        batch_size=4,
        max_new_tokens=6,
        ppo_epochs=1,
        num_minibatches=2,
        ptx_data=str(synth_dir / "pretrain.jsonl"),
        ptx_batch_size=2,
        save_every=2,
        log_rollouts=True,
        lr=1e-4,
        max_length=64,
        device="cpu",
    )
    return PPOConfig(**{**settings, **overrides})


@pytest.fixture
def services(tiny_model_dir):
    replicas = [LocalPolicy(tiny_model_dir, device="cpu"), LocalPolicy(tiny_model_dir, device="cpu")]
    return Services(
        replicas, CallableReward(ground_truth_score), LocalReference(tiny_model_dir, device="cpu"), timeout=5.0
    )


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_field_has_help_and_flags_parse():
    docs = field_docs(PPOConfig)
    assert {f.name for f in dataclasses.fields(PPOConfig)} == set(docs)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, PPOConfig)
    assert "beta: weight of the per-token KL penalty" in parser.format_help()
    args = parser.parse_args(
        [
            "--model",
            "m",
            "--policy",
            "a:1,b:2",
            "--reward",
            "r:1",
            "--reference",
            "f:1",
            "--prompts",
            "p",
            "--out",
            "o",
            "--kl-coef",
            "0.2",
            "--no-whiten-advantages",
            "--target-kl",
            "6",
        ]
    )
    config = config_from_args(args, PPOConfig)
    assert config.policy_targets == ["a:1", "b:2"]
    assert (config.kl_coef, config.whiten_advantages, config.target_kl, config.ptx_data) == (0.2, False, 6.0, None)


def test_loop_logs_syncs_and_checkpoints(tiny_model_dir, synth_dir, tmp_path, services):
    config = make_config(tiny_model_dir, synth_dir, tmp_path / "run")
    state = train(config, services)
    assert state.step == 3

    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert set(REQUIRED_METRICS) <= set(m), set(REQUIRED_METRICS) - set(m)
        assert all(isinstance(v, float) for k, v in m.items() if k != "step")
        # the sampler's log-probs and the learner's, same weights and ids: equal up to float noise
        assert m["rollout/logprob_mismatch"] < 1e-4
        # the step's own peak resident set (Linux) is within the process's, loading included
        if "memory/step_peak_rss_gb" in m:  # where Linux lets the learner reset VmHWM
            assert 0 < m["memory/step_peak_rss_gb"] <= m["memory/peak_rss_gb"]
    # Each step sampled with the weights of the step before it, on both replicas.
    rollouts = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert len(rollouts) == 3 * config.batch_size
    assert all(r["weights_version"] == r["step"] - 1 for r in rollouts)
    assert all(p.model_info().weights_version == 3 for p in services.policies)
    # Synced weights are the learner's, and so is the final model dir.
    learner_weights = state.policy.state_dict()
    for replica in services.policies:
        for name, tensor in replica.policy.model.state_dict().items():
            assert torch.equal(tensor, learner_weights[name]), name
    assert (tmp_path / "run" / "policy" / "config.json").exists()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000002", "step-000003"]
    assert (checkpoints / "latest").read_text() == "step-000003"
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_early_stop_kl_ends_the_epochs_once_a_minibatch_drifts_too_far(tiny_model_dir, synth_dir, tmp_path, services):
    # 2 epochs x 2 minibatches = 4 planned updates a step. The first minibatch of a step always trains
    # (pi_theta = pi_old there); at lr 1e-2 every later one sits beyond KL 1e-6 and is skipped.
    settings = dict(steps=2, ppo_epochs=2, num_minibatches=2, lr=1e-2, ptx_data=None, anneal_lr=False)
    train(make_config(tiny_model_dir, synth_dir, tmp_path / "stop", early_stop_kl=1e-6, **settings), services)
    stopped = read_jsonl(tmp_path / "stop" / "metrics.jsonl")
    assert [m["policy/update_fraction"] for m in stopped] == [0.25, 0.25]
    train(make_config(tiny_model_dir, synth_dir, tmp_path / "full", **settings), services)
    assert [m["policy/update_fraction"] for m in read_jsonl(tmp_path / "full" / "metrics.jsonl")] == [1.0, 1.0]


def test_replicas_serving_bfloat16_get_the_float32_weights_cast(tiny_model_dir, synth_dir, tmp_path):
    replicas = [LocalPolicy(tiny_model_dir, device="cpu", dtype="bfloat16"), LocalPolicy(tiny_model_dir, device="cpu")]
    services = Services(
        replicas, CallableReward(ground_truth_score), LocalReference(tiny_model_dir, device="cpu"), timeout=5.0
    )
    state = train(make_config(tiny_model_dir, synth_dir, tmp_path / "run", steps=2, ptx_data=None), services)
    learner_weights = state.policy.state_dict()
    assert all(t.dtype == torch.float32 for t in learner_weights.values() if t.is_floating_point())
    for replica, dtype in zip(replicas, (torch.bfloat16, torch.float32), strict=True):
        assert replica.model_info().weights_version == 2
        for name, tensor in replica.policy.model.state_dict().items():
            assert torch.equal(tensor, learner_weights[name].to(dtype)), name


def test_resume_after_kill_repeats_nothing_and_matches(tiny_model_dir, synth_dir, tmp_path, services):
    out = tmp_path / "run"
    train(make_config(tiny_model_dir, synth_dir, out, anneal_lr=False), services)
    original = read_jsonl(out / "metrics.jsonl")
    original_rollouts = read_jsonl(out / "rollouts.jsonl")
    # As if SIGKILL struck after step 3 was logged but before its checkpoint was written.
    shutil.rmtree(out / "checkpoints" / "step-000003")
    (out / "checkpoints" / "latest").write_text("step-000002")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "objective/rew')  # a torn line

    train(make_config(tiny_model_dir, synth_dir, out, steps=4, resume=True, anneal_lr=False), services)
    resumed = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    # Prompt cursor, RNG and weights were restored: step 3 is recomputed exactly.
    for key in ("objective/reward", "objective/kl", "loss/policy", "loss/value", "loss/ptx"):
        assert resumed[2][key] == pytest.approx(original[2][key], rel=1e-5, abs=1e-7), key
    rollouts = read_jsonl(out / "rollouts.jsonl")
    assert [r["prompt"] for r in rollouts if r["step"] == 3] == [
        r["prompt"] for r in original_rollouts if r["step"] == 3
    ]
    assert sorted({r["step"] for r in rollouts}) == [1, 2, 3, 4]
    assert len(rollouts) == 4 * 4


def test_stale_replica_gets_the_weights_again(tiny_model_dir, synth_dir, tmp_path, services):
    config = make_config(tiny_model_dir, synth_dir, tmp_path / "run", steps=2, ptx_data=None)
    services.policies[1] = replica = RestartingReplica(tiny_model_dir, restart_at_call=2)
    train(config, services)
    # Step 2 wants version 1 but the restarted replica has 0: it is re-pushed and regenerates once.
    assert replica.generate_calls == 3 and replica.model_info().weights_version == 2
    rollouts = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert all(r["weights_version"] == r["step"] - 1 for r in rollouts)


def test_tokenizer_mismatch_is_refused(tiny_model_dir, synth_dir, tmp_path, services):
    other_tokenizer = tmp_path / "other"
    make_tiny_model(other_tokenizer, TinyModelConfig(vocab_size=800))
    services.reference = LocalReference(other_tokenizer, device="cpu")
    with pytest.raises(
        UserError,
        match=r"tokenizer mismatch: reference LocalReference has fingerprint [0-9a-f]{12}, "
        r"but learner --model has [0-9a-f]{12}",
    ):
        train(make_config(tiny_model_dir, synth_dir, tmp_path / "run"), services)


class NamedReplica(LocalPolicy):
    """A LocalPolicy with an address, as the learner's gRPC clients have."""

    def __init__(self, target: str, model_dir):
        super().__init__(model_dir, device="cpu")
        self.target = target


def test_replicas_found_mid_run_are_used_and_vanished_ones_dropped(tiny_model_dir, synth_dir, tmp_path, caplog):
    other_tokenizer = tmp_path / "other"
    make_tiny_model(other_tokenizer, TinyModelConfig(vocab_size=800))
    models = {"a:1": tiny_model_dir, "b:1": tiny_model_dir, "odd:1": other_tokenizer}
    # what DNS answers before each step: a second pod and a pod with the wrong tokenizer appear, then a
    # goes; at the last step only the refused pod is left, and the learner keeps what it has
    answers = iter([["a:1"], ["a:1", "b:1", "odd:1"], ["b:1", "odd:1"], ["odd:1"], ["odd:1"]])
    connected = []

    def connect(target):
        connected.append(NamedReplica(target, models[target]))
        return connected[-1]

    services = Services(
        [connect("a:1")],
        CallableReward(ground_truth_score),
        LocalReference(tiny_model_dir, device="cpu"),
        timeout=5.0,
        discover=lambda: next(answers),
        connect=connect,
    )
    with caplog.at_level("INFO", logger="rlhf.learner"):
        state = train(make_config(tiny_model_dir, synth_dir, tmp_path / "run", steps=4, ptx_data=None), services)

    assert [name_of(p) for p in services.policies] == ["b:1"]
    a, b = connected[0], next(c for c in connected if c.target == "b:1")
    assert a.model_info().weights_version == 2  # pushed up to version 2, then left the set
    assert b.model_info().weights_version == 4  # joined at step 2, then got every push
    assert all(c.model_info().weights_version == 0 for c in connected if c.target == "odd:1")  # never used
    rollouts = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    assert all(r["weights_version"] == r["step"] - 1 for r in rollouts)
    assert state.step == 4
    assert any("not using a new policy replica" in r.message for r in caplog.records)
    assert any("keeping the old one" in r.message for r in caplog.records)
    assert any("policy replicas changed" in r.message for r in caplog.records)


class Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection refused"


def test_service_that_stays_down_ends_with_checkpoint(tiny_model_dir, synth_dir, tmp_path, services):
    calls = []

    def down(prompt, response):
        calls.append(1)
        raise Unavailable()

    services.reward = CallableReward(down)
    services.timeout = 0.6
    with pytest.raises(UserError, match=r"score on CallableReward did not answer .* --resume"):
        train(make_config(tiny_model_dir, synth_dir, tmp_path / "run"), services)
    assert len(calls) >= 2  # retried with backoff before giving up
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-000000" / "trainer_state.pt", weights_only=True)
    assert saved["step"] == 0 and saved["prompt_cursor"] == 0  # the failed step's prompts come again


def test_control_api_status_watch_weights_and_stop(tiny_model_dir, synth_dir, tmp_path, services):
    config = make_config(tiny_model_dir, synth_dir, tmp_path / "run", steps=50, save_every=100, ptx_data=None)
    control = LearnerControl(config.steps, config.out)
    result = {}
    with ServerThread(LearnerService(control), ServerOptions(port=0)) as port:
        runner = threading.Thread(target=lambda: result.setdefault("state", train(config, services, control)))
        runner.start()
        with LearnerClient(f"127.0.0.1:{port}", timeout=60) as client:
            updates = client.watch()
            first, second = next(updates), next(updates)
            assert second.step == first.step + 1 and "objective/kl" in second.metrics
            status = client.status()
            assert status.total_steps == 50 and status.step >= 1 and status.phase
            version, weights = client.get_weights()
            assert version >= 1 and set(weights) == set(services.policies[0].policy.model.state_dict())
            _, halves = client.get_weights(dtype="bfloat16")  # what a bfloat16 replica pulls
            assert set(halves) == set(weights)
            assert all(
                t.dtype == (torch.bfloat16 if weights[n].is_floating_point() else weights[n].dtype)
                for n, t in halves.items()
            )
            for bad in ("float8", "int8"):
                with pytest.raises(grpc.RpcError) as refused:
                    client.get_weights(dtype=bad)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad in refused.value.details()
            stopped = client.stop()
        runner.join(60)
    state = result["state"]
    assert stopped.step == state.step < 50
    assert stopped.checkpoint_path.endswith(f"step-{state.step:06d}")
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == list(range(1, state.step + 1))
    assert not (tmp_path / "run" / "policy").exists()  # stopped early: no final model


class PushFailsFrom:
    """A LocalPolicy whose UpdateWeights is UNAVAILABLE for every version from `version` on."""

    def __init__(self, replica: LocalPolicy, version: int):
        self.replica, self.version = replica, version

    def generate(self, prompts, params):
        return self.replica.generate(prompts, params)

    def update_weights(self, state_dict, version):
        if version >= self.version:
            raise Unavailable()
        return self.replica.update_weights(state_dict, version)

    def model_info(self):
        return self.replica.model_info()


def test_failed_weight_sync_logs_the_step_and_resume_continues(tiny_model_dir, synth_dir, tmp_path, services):
    healthy = services.policies[0]
    services.policies[0] = PushFailsFrom(healthy, version=2)
    services.timeout = 0.3
    with pytest.raises(UserError, match="update_weights on PushFailsFrom did not answer"):
        train(make_config(tiny_model_dir, synth_dir, tmp_path / "run", steps=4, save_every=10), services)
    # Step 2's update happened before its push failed: it is logged and checkpointed, not lost.
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step-000002"

    services.policies[0] = healthy
    train(make_config(tiny_model_dir, synth_dir, tmp_path / "run", steps=4, resume=True), services)
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert all(r["weights_version"] == r["step"] - 1 for r in read_jsonl(tmp_path / "run" / "rollouts.jsonl"))


def test_a_stop_request_ends_retrying_at_once():
    import time

    from rlhf.learner.retries import ServiceDown, with_retries

    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "down"

    calls = []

    def always_down():
        calls.append(1)
        raise Unavailable()

    start = time.monotonic()
    with pytest.raises(ServiceDown, match="stop requested"):
        with_retries("generate on p", 300.0, always_down, abort=lambda: len(calls) >= 2)
    assert len(calls) == 2 and time.monotonic() - start < hang_guard(60)  # not the 300 s --service-timeout


def test_policy_names_are_followed_through_scaling_and_dns_failures(tiny_model_dir, synth_dir, tmp_path, monkeypatch):
    import socket

    from rlhf.learner.cli import connect_services

    answers = [["10.0.0.5", "10.0.0.7"]]  # what DNS says for policy.rlhf.svc, newest last

    def getaddrinfo(host, port, **kwargs):
        if answers[-1] is None:
            raise socket.gaierror("temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[-1]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    config = make_config(
        tiny_model_dir,
        synth_dir,
        tmp_path / "run",
        policy="policy.rlhf.svc:50052",
        reward="reward:50051",
        reference="reference:50053",
    )
    services = connect_services(config, argparse.Namespace(auth_token_file=None, service_tls_ca=None))
    try:
        assert [name_of(p) for p in services.policies] == ["10.0.0.5:50052", "10.0.0.7:50052"]
        answers.append(None)  # a DNS hiccup: keep the pods we know
        assert services.discover() == ["10.0.0.5:50052", "10.0.0.7:50052"]
        answers.append(["10.0.0.7"])  # scaled down to one pod
        assert services.discover() == ["10.0.0.7:50052"]
    finally:
        services.close()

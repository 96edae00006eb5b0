"""--rpc-timeout is each call's deadline, --service-timeout the retry budget: a call that hangs is cut and retried."""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc

from rlhf.core.server import ServerOptions, ServerThread
from rlhf.learner.cli import connect_services
from rlhf.learner.config import PPOConfig
from rlhf.v1 import reward_pb2, reward_pb2_grpc
from tests.helpers import hang_guard


class HangsOnce(reward_pb2_grpc.RewardScoringServicer):
    """Score hangs for a minute the first time, then answers at once."""

    name, service_names = "hangs", ("rlhf.v1.RewardScoring",)

    def __init__(self):
        self.calls = 0

    def add_to_server(self, server):
        reward_pb2_grpc.add_RewardScoringServicer_to_server(self, server)

    async def load(self):
        pass

    async def close(self):
        pass

    async def Score(self, request, context):
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(60)
        return reward_pb2.ScoreResponse(scores=[1.0] * len(request.items))


def test_a_hung_call_is_cut_at_the_rpc_timeout_and_retried_within_the_budget():
    service = HangsOnce()
    with ServerThread(service, ServerOptions(port=0)) as port:
        config = PPOConfig(
            model="m",
            policy="127.0.0.1:1",
            reward=f"127.0.0.1:{port}",
            reference="127.0.0.1:1",
            prompts="p",
            out="o",
            rpc_timeout=1.0,
            service_timeout=30.0,
        )
        args = argparse.Namespace(
            auth_token_file=None, service_tls_ca=None, service_tls_cert=None, service_tls_key=None
        )
        services = connect_services(config, args)
        try:
            start = time.monotonic()
            scores = services.call(services.rewards[0], "score", [("p", "r")])
            elapsed = time.monotonic() - start
        finally:
            services.close()
    assert scores == [1.0] and service.calls == 2
    assert 1.0 <= elapsed < hang_guard(40)  # one deadline of 1 s, a short backoff, then the answer; not the 60 s hang


class FakeError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_only_admission_control_refusals_of_resource_exhausted_are_retried():
    from rlhf.learner.retries import retryable

    assert retryable(
        FakeError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "reward is overloaded: 8 items queued, limit of 8 (--max-queue); retry with backoff",
        )
    )
    assert not retryable(FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"))
    assert retryable(FakeError(grpc.StatusCode.UNAVAILABLE, "")) and not retryable(
        FakeError(grpc.StatusCode.INVALID_ARGUMENT, "")
    )

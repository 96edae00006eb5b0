"""--rollout-ahead N in the loop: the producer (rlhf.learner.producer) collects each step's batch from the services
ahead of the learner; the learner takes it, runs its own forward on it and gathers the ranks' shares.

The learner's forward happens when the batch is taken, at the start of the update: its log-probs are the proximal
policy's, around which the decoupled objective clips (docs/async.md); the replica's, with each sample, are the
behaviour policy's. New weights are pushed in the background: the learner goes on to the next update while the
replicas take them between their batches, and the producer starts the batch N steps on once they have.
Under torchrun every rank runs a producer over its share of each batch, from its own replicas; the collectives
(the forward, the gather, agreeing on errors and on staleness) all run on the main thread.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

import torch

from rlhf.core import distributed
from rlhf.learner.config import PPOConfig
from rlhf.learner.control import LearnerControl
from rlhf.learner.producer import Producer, fresh_batch
from rlhf.learner.ranks import gather_rollout, replicas_of
from rlhf.learner.replicas import Services
from rlhf.learner.retries import on_all_ranks
from rlhf.learner.rollout import (
    Collected,
    Rollout,
    alone,
    collect_from_services,
    learner_forward,
    rollout_of,
    sampling_params,
)
from rlhf.learner.state import TrainState


class RolloutsAhead:
    def __init__(self, state: TrainState, services: Services, config: PPOConfig, control: LearnerControl):
        self.services, self.config, self.control = services, config, control
        self.here = distributed.world()
        self.pushing: Future | None = None
        self.producer = Producer(self.collect, state.prompts, config.batch_size, config.rollout_ahead, state.step)
        control.in_flight = self.producer.in_flight

    def collect(self, prompts: list[str], step: int) -> Collected:
        """This rank's share of step `step`'s batch, on a producer thread: no collectives here."""
        share = distributed.shard_rows(len(prompts))
        replicas, first_share = replicas_of(self.services.policies, self.here)
        collected, _ = collect_from_services(
            self.services,
            prompts[share],
            sampling_params(self.config, step),
            step,
            self.config.staleness_limit,
            self.control.published if self.here.is_main else None,  # rank 0 pushes to a replica that lags
            replicas,
            first_share,
            together=alone,
        )
        collected.first_prompt = share.start
        return collected

    def next_rollout(self, state: TrainState) -> tuple[Rollout, dict[str, float]]:
        """Step state.step's rollout, every sample at most --max-staleness versions old; and how the flow went."""
        self.control.set_phase("wait_for_rollout")
        batch, dropped, waited = fresh_batch(
            self.producer, state.step, self.config.staleness_limit, distributed.any_rank, on_all_ranks
        )
        state.prompts.cursor = batch.cursor  # trained on from now: what a checkpoint records
        collected = batch.collected
        start = time.perf_counter()
        forward = learner_forward(state, collected.pairs)  # the proximal policy: the learner's weights now
        collected.timings["time/logprobs"] = time.perf_counter() - start
        rollout = gather_rollout(
            rollout_of(collected, forward, self.services.weights_of_rewards), collected.first_prompt
        )
        dropped = distributed.all_reduce_sum(torch.tensor(float(dropped + collected.dropped_stale))).item()
        return rollout, {
            "rollout/dropped_stale": dropped,
            "time/learner_idle": waited,
            "time/services_idle": self.producer.take_services_idle(),
        }

    def sync_weights(self, state: TrainState) -> float:
        """Publish pi_RL as version state.step and push it to every replica in the background; returns the seconds
        the learner spent (gathering the weights, and waiting for the previous push to end)."""
        start = time.perf_counter()
        weights = state.policy_weights()  # every rank sends its shards
        self.wait_for_push()
        version = state.step
        if self.here.is_main:
            self.control.publish_weights(version, weights)  # first, so a replica restarting now pulls it
            self.pushing = self.services.pool.submit(self.push, weights, version)
        else:  # rank 0 pushes; this rank's replicas are checked for the version when they generate
            self.producer.weights_ready(version)
        return time.perf_counter() - start

    def push(self, weights: dict[str, torch.Tensor], version: int) -> None:
        self.services.push_weights(weights, version)
        self.producer.weights_ready(version)

    def wait_for_push(self) -> None:
        """The push under way, ended; its failure raised on every rank."""
        pushing, self.pushing = self.pushing, None
        on_all_ranks(lambda: pushing.result() if pushing is not None else None)

    def close(self) -> None:
        """No more batches; the last push ends (the replicas serve the final weights), unless it fails."""
        self.producer.stop()
        self.control.in_flight = list
        if self.pushing is not None:
            self.pushing.exception()

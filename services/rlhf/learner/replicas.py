"""The services the learner calls: the policy replicas (followed as they come and go), the reward services with
their weights, and the reference; every call retried (rlhf.learner.retries), and weight pushes to the replicas."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from rlhf.core.tensors import parse_dtype
from rlhf.core.weights import cast_floating
from rlhf.learner.interfaces import PolicySampler, ReferenceLogprobs, RewardScorer
from rlhf.learner.retries import with_retries

log = logging.getLogger("rlhf.learner")


def name_of(service: object) -> str:
    """A client's target address, or an in-process service's class name: how logs and errors name it."""
    return getattr(service, "target", None) or type(service).__name__


@dataclass
class Services:
    """What the loop calls: policy replicas, reward services and reference, through one thread pool."""

    policies: list[PolicySampler]
    reward: RewardScorer | Sequence[RewardScorer]  # one, or several whose weighted scores are summed
    reference: ReferenceLogprobs
    timeout: float = 300.0  # --service-timeout
    reward_weights: Sequence[float] | None = None  # one per reward service (default 1 each)
    abort: Callable[[], bool] = lambda: False  # a stop was requested: give up retrying
    # Replica discovery: `discover()` lists the policy targets now (a headless Service name resolved
    # again: pods come and go), `connect(target)` makes a client. None: the replica set is fixed.
    discover: Callable[[], list[str]] | None = None
    connect: Callable[[str], PolicySampler] | None = None
    pool: ThreadPoolExecutor = field(init=False)  # threads for replicas, reward and reference

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(max(32, len(self.policies) + 2), "learner-rpc")  # threads start lazily
        weights = self.reward_weights
        if weights is not None and len(weights) != len(self.rewards):
            raise ValueError(f"{len(weights)} reward weights for {len(self.rewards)} reward services")

    @property
    def rewards(self) -> list[RewardScorer]:
        return list(self.reward) if isinstance(self.reward, Sequence) else [self.reward]

    @property
    def weights_of_rewards(self) -> list[float]:
        return list(self.reward_weights) if self.reward_weights is not None else [1.0] * len(self.rewards)

    def update_replicas(self, accept: Callable[[PolicySampler], bool]) -> tuple[list[str], list[str]]:
        """Follow the discovered replica set: connect new targets that `accept` approves, drop vanished
        ones. Returns (added, removed) targets. An empty answer keeps the set (a DNS hiccup)."""
        if self.discover is None or self.connect is None:
            return [], []
        targets = self.discover()
        if not targets:
            return [], []
        current = {name_of(p): p for p in self.policies}
        added = []
        for target in targets:
            if target not in current:
                replica = self.connect(target)
                if accept(replica):
                    current[target] = replica
                    added.append(target)
                elif callable(getattr(replica, "close", None)):
                    replica.close()
        removed = [t for t in current if t not in targets]
        if len(removed) == len(current):  # e.g. a rolling restart whose new pods are still loading
            log.warning("no policy replica left in the new set; keeping the old one", extra={"found": targets})
            removed = []
        for target in removed:
            replica = current.pop(target)
            if callable(getattr(replica, "close", None)):
                replica.close()
        if added or removed:
            self.policies = list(current.values())
        return added, removed

    def adopt(self, targets: Sequence[str]) -> None:
        """Use exactly these replicas, in this order: under torchrun, rank 0's set, so that every rank splits the
        same replicas the same way and rank 0's pushes reach every replica any rank samples from."""
        current = {name_of(p): p for p in self.policies}
        if list(current) == list(targets):
            return
        if self.connect is None:  # a fixed set (in-process services): the known ones, in rank 0's order
            self.policies = [current[t] for t in targets if t in current]
            return
        self.policies = [current.pop(t) if t in current else self.connect(t) for t in targets]
        for replica in current.values():
            if callable(getattr(replica, "close", None)):
                replica.close()

    def call(self, service: object, method: str, *args):
        """service.method(*args) with retries; gRPC clients are health-checked between attempts."""
        wait_ready = getattr(service, "wait_until_serving", None)
        return with_retries(
            f"{method} on {name_of(service)}",
            self.timeout,
            getattr(service, method),
            *args,
            wait_ready=wait_ready,
            abort=self.abort,
        )

    def push_weights(self, weights: dict[str, torch.Tensor], version: int) -> None:
        """Send the weights to every replica, concurrently, each in the dtype it serves."""
        served = list(self.pool.map(self.served_dtype, self.policies))
        casts = {dtype: cast_floating(weights, dtype) for dtype in set(served)}
        futures = [
            self.pool.submit(self.call, p, "update_weights", casts[dtype], version)
            for p, dtype in zip(self.policies, served, strict=True)
        ]
        for future in futures:
            future.result()

    def push_to(self, replica: PolicySampler, weights: dict[str, torch.Tensor], version: int) -> None:
        self.call(replica, "update_weights", cast_floating(weights, self.served_dtype(replica)), version)

    def served_dtype(self, replica: PolicySampler) -> torch.dtype:
        """The learner trains in float32; a replica may serve bfloat16 or float16. Asked at every push:
        a replica may have restarted with other settings."""
        return parse_dtype(self.call(replica, "model_info").dtype)

    def close(self) -> None:
        """Close the clients' channels (in-process services have nothing to close)."""
        self.pool.shutdown()
        for service in [*self.policies, *self.rewards, self.reference]:
            if callable(getattr(service, "close", None)):
                service.close()

"""The rollout: sample from pi_RL on every replica, score, and get log pi_SFT, log pi_RL and V.

This is the step's dataset of triples (x, y, r). Policy replicas, reward and reference are
reached through the client interfaces in `interfaces.py`; calls that fail with UNAVAILABLE or
DEADLINE_EXCEEDED are retried with backoff for up to --service-timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import torch

from rlhf.core import distributed
from rlhf.core.batching import QUEUE_FULL_MARK
from rlhf.core.tensors import parse_dtype
from rlhf.core.types import GenerationParams, Sample
from rlhf.core.weights import cast_floating
from rlhf.learner.interfaces import PolicyService, ReferenceService, RewardService
from rlhf.learner.models import policy_forward, value_forward
from rlhf.learner.state import TrainState

log = logging.getLogger("rlhf.learner")

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def retryable(err: grpc.RpcError) -> bool:
    """UNAVAILABLE, DEADLINE_EXCEEDED, and RESOURCE_EXHAUSTED from a service's admission control (--max-queue);
    not a RESOURCE_EXHAUSTED for a message over the size limit, which no retry can fix."""
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return QUEUE_FULL_MARK in (err.details() or "")
    return err.code() in RETRYABLE


_JITTER = random.Random()  # its own generator: the run's seeded `random` state stays untouched (resume)


class ServiceDown(Exception):
    """A service stayed unreachable for longer than --service-timeout."""


def on_all_ranks(fn: Callable, *args):
    """fn(*args); if it failed with a service error here or on any other rank, every rank raises (its own error,
    or ServiceDown naming another rank), so that all ranks go on to the next collective together, or all take
    the checkpoint-and-stop path together. In one process: fn(*args) as it is."""
    error: BaseException | None = None
    result = None
    try:
        result = fn(*args)
    except (ServiceDown, grpc.RpcError) as err:
        error = err
    if distributed.any_rank(error is not None):
        raise error or ServiceDown("another learner rank lost a service (see its log)")
    return result


def name_of(service: object) -> str:
    return getattr(service, "target", None) or type(service).__name__


def with_retries(
    what: str,
    timeout: float,
    fn: Callable,
    *args,
    wait_ready: Callable[[float], None] | None = None,
    abort: Callable[[], bool] = lambda: False,
):
    """fn(*args), retried on UNAVAILABLE/DEADLINE_EXCEEDED with exponential backoff until timeout.

    Between attempts, wait_ready(seconds) (a health check) holds off until a restarted server has
    loaded its model: a server accepts calls as soon as its port is bound, before it is SERVING.
    abort() ends the waiting early (a stop was requested: SIGTERM must not wait out --service-timeout).
    """
    deadline, delay = time.monotonic() + timeout, 0.25
    while True:
        try:
            return fn(*args)
        except grpc.RpcError as err:
            if not retryable(err):
                raise
            if abort():
                raise ServiceDown(f"{what}: stop requested while the service was unavailable") from err
            if time.monotonic() + delay > deadline:
                raise ServiceDown(
                    f"{what} did not answer for {timeout:.0f}s (--service-timeout): {err.code().name}: {err.details()}"
                ) from err
            log.warning("retrying", extra={"service": what, "code": err.code().name, "delay_s": delay})
            sleep_unless(abort, delay * _JITTER.uniform(0.5, 1.0))  # jitter: retries from many callers spread out
            delay = min(2 * delay, 5.0)
            if wait_ready is not None and not abort():
                with contextlib.suppress(TimeoutError, grpc.RpcError):
                    wait_ready(max(0.1, deadline - time.monotonic()), abort=abort)
            if abort():  # not one more attempt: its deadline could be --service-timeout itself
                raise ServiceDown(f"{what}: stop requested while the service was unavailable") from err


def sleep_unless(abort: Callable[[], bool], seconds: float, tick: float = 0.05) -> None:
    """time.sleep(seconds), cut short once abort() is true."""
    deadline = time.monotonic() + seconds
    while not abort() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(tick, left))


@dataclass
class Services:
    policies: list[PolicyService]
    reward: RewardService | Sequence[RewardService]  # one, or several whose weighted scores are summed
    reference: ReferenceService
    timeout: float = 300.0  # --service-timeout
    reward_weights: Sequence[float] | None = None  # one per reward service (default 1 each)
    abort: Callable[[], bool] = lambda: False  # a stop was requested: give up retrying
    # Replica discovery: `discover()` lists the policy targets now (a headless Service name resolved
    # again: pods come and go), `connect(target)` makes a client. None: the replica set is fixed.
    discover: Callable[[], list[str]] | None = None
    connect: Callable[[str], PolicyService] | None = None
    pool: ThreadPoolExecutor = field(init=False)  # threads for replicas, reward and reference

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(max(32, len(self.policies) + 2), "learner-rpc")  # threads start lazily
        weights = self.reward_weights
        if weights is not None and len(weights) != len(self.rewards):
            raise ValueError(f"{len(weights)} reward weights for {len(self.rewards)} reward services")

    @property
    def rewards(self) -> list[RewardService]:
        return list(self.reward) if isinstance(self.reward, Sequence) else [self.reward]

    @property
    def weights_of_rewards(self) -> list[float]:
        return list(self.reward_weights) if self.reward_weights is not None else [1.0] * len(self.rewards)

    def update_replicas(self, accept: Callable[[PolicyService], bool]) -> tuple[list[str], list[str]]:
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

    def push_to(self, replica: PolicyService, weights: dict[str, torch.Tensor], version: int) -> None:
        self.call(replica, "update_weights", cast_floating(weights, self.served_dtype(replica)), version)

    def served_dtype(self, replica: PolicyService) -> torch.dtype:
        """The learner trains in float32; a replica may serve bfloat16 or float16. Asked at every push:
        a replica may have restarted with other settings."""
        return parse_dtype(self.call(replica, "model_info").dtype)

    def close(self) -> None:
        """Close the clients' channels (in-process services have nothing to close)."""
        self.pool.shutdown()
        for service in [*self.policies, *self.rewards, self.reference]:
            if callable(getattr(service, "close", None)):
                service.close()


@dataclass
class Rollout:
    """One step's samples and what PPO needs about them; response tensors are (B, R), right-padded."""

    prompts: list[str]
    samples: list[Sample]
    scores: torch.Tensor  # (B,) r_theta(x, y)
    ref_logprobs: torch.Tensor  # (B, R) log pi_SFT(y_t | x, y_<t)
    logprobs: torch.Tensor  # (B, R) log pi_RL at rollout time: PPO's "old" log-probs
    values: torch.Tensor  # (B, R) V(x, y_<t) at rollout time (zeros without a critic)
    entropy: torch.Tensor  # (B, R)
    mask: torch.Tensor  # (B, R) 1.0 on response tokens
    timings: dict[str, float]
    reward_components: torch.Tensor | None = None  # (K, B) each reward service's scores, when K > 1

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [s.prompt_token_ids for s in self.samples]

    @property
    def response_ids(self) -> list[list[int]]:
        return [s.response_token_ids for s in self.samples]

    @property
    def groups(self) -> torch.Tensor:
        """(B,) each sample's prompt number in the step: the samples of one prompt form a group."""
        return torch.tensor([s.prompt_index for s in self.samples], device=self.scores.device)

    def rows(self) -> list[dict]:
        """One JSON-able record per sample, for rollouts.jsonl."""
        return [
            {
                "prompt": p,
                "response": s.response_text,
                "score": score,
                "weights_version": s.weights_version,
                "finish_reason": s.finish_reason,
                "group": s.prompt_index,
            }
            for p, s, score in zip(self.prompts, self.samples, self.scores.tolist(), strict=True)
        ]

    @property
    def ended_with_eos(self) -> torch.Tensor:
        return torch.tensor([s.finish_reason == "eos" for s in self.samples], device=self.scores.device)


def generate_on_replicas(
    services: Services,
    prompts: list[str],
    params: GenerationParams,
    weights: Callable[[], dict] | None,
    version: int,
    max_staleness: int,
    replicas: Sequence[PolicyService] | None = None,
    first_share: int = 0,
) -> list[Sample]:
    """Spread prompts evenly over the replicas, generate concurrently, and insist on fresh weights.
    All params.n samples of a prompt come from one replica, so a group is reproducible from --seed: share i
    (counted from `first_share`, which the lower ranks' shares take) samples with seed + i.

    A replica whose samples are more than max_staleness versions old (it restarted, or missed a
    push) gets the current weights again and regenerates its share; without `weights` (a rank other than 0,
    which pushes), it waits for rank 0's push or its own pull and tries again.
    """
    replicas = list(services.policies if replicas is None else replicas)
    n = len(replicas)
    shares = [prompts[i * len(prompts) // n : (i + 1) * len(prompts) // n] for i in range(n)]

    def generate_share(i: int) -> list[Sample]:
        replica = replicas[i]
        seed = None if params.seed is None else params.seed + first_share + i
        share_params = params if seed is None else dataclasses.replace(params, seed=seed)
        attempts = 3 if weights is not None else 30
        for _attempt in range(attempts):
            samples = services.call(replica, "generate", shares[i], share_params)
            versions = {s.weights_version for s in samples}
            if all(version - max_staleness <= v <= version for v in versions):
                for s in samples:
                    s.prompt_index += i * len(prompts) // n  # index into the whole batch
                return samples
            log.warning(
                "stale weights on a replica; " + ("pushing again" if weights is not None else "waiting"),
                extra={"replica": name_of(replica), "versions": sorted(versions), "want": version},
            )
            if weights is not None:
                services.push_to(replica, weights(), version)
            else:
                sleep_unless(services.abort, 1.0)
        raise ServiceDown(f"policy {name_of(replica)} keeps serving weights other than version {version}")

    shares_out = services.pool.map(generate_share, [i for i in range(n) if shares[i]])
    return [s for share in shares_out for s in share]


def collect_rollout(
    state: TrainState,
    services: Services,
    prompts: list[str],
    params: GenerationParams,
    max_staleness: int,
    on_phase: Callable[[str], None] = lambda phase: None,
    weights: Callable[[], dict] | None = None,
    replicas: Sequence[PolicyService] | None = None,
    first_share: int = 0,
) -> Rollout:
    """Generate, then score, reference log-probs and the learner's own forward, all concurrently. Under torchrun
    this is one rank's share, from its replicas; the forward is a collective, so the ranks agree first that every
    one of them has its samples (on_all_ranks), and again that the scores and reference log-probs came."""
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - start
        return result

    on_phase("generate")
    samples = on_all_ranks(
        timed,
        "time/generate",
        generate_on_replicas,
        services,
        prompts,
        params,
        weights,
        state.step,
        max_staleness,
        replicas,
        first_share,
    )
    prompt_texts = [prompts[s.prompt_index] for s in samples]
    # Token ids, never re-tokenized text, go to the reference: re-tokenizing would corrupt the KL.
    pairs = [(s.prompt_token_ids, s.response_token_ids) for s in samples]
    texts = [(p, s.response_text) for p, s in zip(prompt_texts, samples, strict=True)]
    on_phase("score")  # the reference and the learner's own forward run meanwhile
    scores = services.pool.submit(timed, "time/score", score_all, services, texts)
    ref = services.pool.submit(timed, "time/reference", services.call, services.reference, "logprobs", pairs)

    start = time.perf_counter()
    with torch.no_grad(), state.autocast():
        logprobs, entropy, mask = policy_forward(state.policy, *zip(*pairs, strict=True), state.pad_id)
        values = (
            value_forward(state.value, *zip(*pairs, strict=True), state.pad_id)
            if state.value is not None
            else torch.zeros_like(logprobs)
        )
    for model in filter(None, (state.policy, state.value)):
        distributed.reshard(model)  # FSDP2 keeps a root gathered after a forward without backward: free it
    timings["time/logprobs"] = time.perf_counter() - start
    ref_result, scores_result = on_all_ranks(lambda: (ref.result(), scores.result()))

    device = mask.device
    ref_logprobs = torch.zeros_like(logprobs)
    for row, (lp, (_, response)) in enumerate(zip(ref_result, pairs, strict=True)):
        if len(lp) != len(response):
            raise ValueError(f"reference returned {len(lp)} log-probs for a {len(response)}-token response")
        ref_logprobs[row, : len(lp)] = torch.tensor(lp, device=device)
    components = torch.tensor(scores_result, device=device)  # (K, B)
    weights_of_rewards = torch.tensor(services.weights_of_rewards, device=device)
    return Rollout(
        prompt_texts,
        samples,
        weights_of_rewards @ components,
        ref_logprobs,
        logprobs,
        values,
        entropy,
        mask,
        timings,
        components if len(components) > 1 else None,
    )


def score_all(services: Services, texts: list[tuple[str, str]]) -> list[list[float]]:
    """Every reward service's scores of the texts, concurrently: (K, B)."""
    futures = [services.pool.submit(services.call, reward, "score", texts) for reward in services.rewards]
    return [future.result() for future in futures]

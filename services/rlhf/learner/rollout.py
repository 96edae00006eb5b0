"""The rollout: sample from pi_RL on every replica, score, and get log pi_SFT, log pi_RL and V.

This is the step's dataset of triples (x, y, r). Policy replicas, reward and reference are reached through
`Services` (rlhf.learner.replicas), whose calls are retried (rlhf.learner.retries).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rlhf.core import distributed
from rlhf.core.types import GenerationParams, Sample
from rlhf.learner.config import PPOConfig
from rlhf.learner.data import reward_prompt
from rlhf.learner.interfaces import PolicySampler
from rlhf.learner.models import policy_forward, value_forward
from rlhf.learner.replicas import Services, name_of
from rlhf.learner.retries import ServiceDown, on_all_ranks, sleep_unless
from rlhf.learner.state import TrainState

log = logging.getLogger("rlhf.learner")


@dataclass
class Rollout:
    """One step's samples and what PPO needs about them; response tensors are (B, R), right-padded."""

    prompts: list[str]
    samples: list[Sample]
    scores: torch.Tensor  # (B,) r_theta(x, y)
    ref_logprobs: torch.Tensor  # (B, R) log pi_SFT(y_t | x, y_<t)
    logprobs: torch.Tensor  # (B, R) log pi_RL at rollout time: PPO's "old" log-probs
    sampler_logprobs: torch.Tensor  # (B, R) the same, as the replica that sampled reported them (its weights)
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


def sampling_params(config: PPOConfig, step: int) -> GenerationParams:
    """How step `step`'s batch is sampled; its seeds come from the step, so a batch collected again (after a resume,
    or dropped as stale) draws what it would have drawn with the same weights."""
    return GenerationParams(
        max_new_tokens=config.max_new_tokens,
        min_new_tokens=config.min_new_tokens,
        n=config.samples_per_prompt,
        seed=config.seed * 1_000_003 + step * 1009,
    )


def generate_on_replicas(
    services: Services,
    prompts: list[str],
    params: GenerationParams,
    weights: Callable[[], tuple[int, dict]] | None,
    version: int,
    max_staleness: int,
    replicas: Sequence[PolicySampler] | None = None,
    first_share: int = 0,
) -> tuple[list[Sample], int]:
    """Spread prompts evenly over the replicas, generate concurrently, and insist on fresh weights.
    All params.n samples of a prompt come from one replica, so a group is reproducible from --seed: share i
    (counted from `first_share`, which the lower ranks' shares take) samples with seed + i.

    A replica whose samples are more than max_staleness versions older than `version` (it restarted, or missed a
    push) gets the published weights (`weights()`: their version and tensors) again and regenerates its share;
    without `weights` (a rank other than 0, which pushes), it waits for rank 0's push or its own pull and tries
    again. Returns (the samples, the stale samples dropped on the way)."""
    replicas = list(services.policies if replicas is None else replicas)
    n = len(replicas)
    shares = [prompts[i * len(prompts) // n : (i + 1) * len(prompts) // n] for i in range(n)]

    def generate_share(i: int) -> tuple[list[Sample], int]:
        replica = replicas[i]
        seed = None if params.seed is None else params.seed + first_share + i
        share_params = params if seed is None else dataclasses.replace(params, seed=seed)
        attempts, dropped = 3 if weights is not None else 30, 0
        for _attempt in range(attempts):
            samples = services.call(replica, "generate", shares[i], share_params)
            versions = {s.weights_version for s in samples}
            if all(version - max_staleness <= v <= version for v in versions):
                check_sampler_logprobs(replica, samples)
                for s in samples:
                    s.prompt_index += i * len(prompts) // n  # index into the whole batch
                    s.extra["replica"] = name_of(replica)
                return samples, dropped
            dropped += len(samples)
            log.warning(
                "stale weights on a replica; " + ("pushing again" if weights is not None else "waiting"),
                extra={"replica": name_of(replica), "versions": sorted(versions), "want": version},
            )
            if weights is not None:
                published, tensors = weights()
                services.push_to(replica, tensors, published)
            else:
                sleep_unless(services.abort, 1.0)
        raise ServiceDown(f"policy {name_of(replica)} keeps serving weights other than version {version}")

    shares_out = list(services.pool.map(generate_share, [i for i in range(n) if shares[i]]))
    return [s for share, _ in shares_out for s in share], sum(dropped for _, dropped in shares_out)


def logprob_mismatch_by_replica(rollout: Rollout) -> dict[str, float]:
    """rollout/logprob_mismatch/REPLICA: mean |sampler - learner| log-prob per response token of each replica's
    samples, so that a replica whose engine (or weights) drifts from the learner's numerics shows by name."""
    gap = (rollout.sampler_logprobs - rollout.logprobs).abs() * rollout.mask  # (B, R)
    by_replica: dict[str, list[int]] = {}
    for row, sample in enumerate(rollout.samples):
        by_replica.setdefault(sample.extra.get("replica", "local"), []).append(row)
    return {
        f"rollout/logprob_mismatch/{name}": (gap[rows].sum() / rollout.mask[rows].sum().clamp(min=1)).item()
        for name, rows in sorted(by_replica.items())
    }


def check_sampler_logprobs(replica: PolicySampler, samples: list[Sample]) -> None:
    """A replica must report one log-prob per response token: the off-policy correction weighs each token by them."""
    for sample in samples:
        if len(sample.logprobs) != len(sample.response_token_ids):
            raise ServiceDown(
                f"policy {name_of(replica)} returned {len(sample.logprobs)} log-probs for "
                f"{len(sample.response_token_ids)} response tokens"
            )


def learner_forward(state: TrainState, pairs: list[tuple[list[int], list[int]]]):
    """(log pi_RL, entropy, mask, V) of the sampled ids, each (B, R), under the learner's own weights."""
    with torch.no_grad(), state.autocast():
        logprobs, entropy, mask = policy_forward(state.policy, *zip(*pairs, strict=True), state.pad_id)
        values = (
            value_forward(state.value, *zip(*pairs, strict=True), state.pad_id)
            if state.value is not None
            else torch.zeros_like(logprobs)
        )
    for model in filter(None, (state.policy, state.value)):
        distributed.reshard(model)  # FSDP2 keeps a root gathered after a forward without backward: free it
    return logprobs, entropy, mask, values


def right_padded(rows: Sequence[Sequence[float]], like: torch.Tensor) -> torch.Tensor:
    """(B, R) the rows, zero-padded on the right to like's width, in like's dtype and on its device."""
    out = torch.zeros_like(like)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=out.dtype, device=out.device)
    return out


@dataclass
class Collected:
    """What the services return for a batch (this rank's share): samples, scores and reference log-probs."""

    prompts: list[str]  # each sample's prompt
    samples: list[Sample]
    scores: list[list[float]]  # (K, B) each reward service's scores
    ref_logprobs: list[list[float]]  # log pi_SFT of each response token
    timings: dict[str, float]
    dropped_stale: int = 0  # samples a replica drew with too old weights, generated again
    first_prompt: int = 0  # under torchrun, the number of this share's first prompt in the batch

    @property
    def weights_version(self) -> int:
        """The oldest weights version among the samples."""
        return min(s.weights_version for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def pairs(self) -> list[tuple[list[int], list[int]]]:
        return [(s.prompt_token_ids, s.response_token_ids) for s in self.samples]


def alone(fn: Callable, *args):
    """fn(*args), with no agreement between ranks: collect_from_services off the main thread (the producer)."""
    return fn(*args)


def collect_from_services(
    services: Services,
    prompts: list[str],
    params: GenerationParams,
    version: int,
    max_staleness: int,
    weights: Callable[[], tuple[int, dict]] | None = None,
    replicas: Sequence[PolicySampler] | None = None,
    first_share: int = 0,
    on_phase: Callable[[str], None] = lambda phase: None,
    meanwhile: Callable[[list], object] = lambda pairs: None,
    together: Callable = on_all_ranks,
) -> tuple[Collected, object]:
    """Generate (samples at most max_staleness versions older than `version`), then score and take the reference
    log-probs concurrently, while `meanwhile(pairs)` runs here (the learner's forward, in lockstep). Under
    torchrun this is one rank's share, from its replicas, and `together` (on_all_ranks) makes the ranks agree that
    every one of them has its samples, and again its scores and reference log-probs. Returns (the batch,
    meanwhile's result)."""
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - start
        return result

    on_phase("generate")
    samples, dropped = together(
        timed,
        "time/generate",
        generate_on_replicas,
        services,
        prompts,
        params,
        weights,
        version,
        max_staleness,
        replicas,
        first_share,
    )
    prompt_texts = [prompts[s.prompt_index] for s in samples]
    # Token ids, never re-tokenized text, go to the reference: re-tokenizing would corrupt the KL.
    pairs = [(s.prompt_token_ids, s.response_token_ids) for s in samples]
    # A conversation goes to the reward services as messages: each renders it with its own template.
    texts = [(reward_prompt(p), s.response_text) for p, s in zip(prompt_texts, samples, strict=True)]
    on_phase("score")  # the reference, and whatever runs meanwhile, at the same time
    scores = services.pool.submit(timed, "time/score", score_all, services, texts)
    ref = services.pool.submit(timed, "time/reference", services.call, services.reference, "logprobs", pairs)
    during = meanwhile(pairs)
    ref_result, scores_result = together(lambda: (ref.result(), scores.result()))
    for lp, (_, response) in zip(ref_result, pairs, strict=True):
        if len(lp) != len(response):
            raise ValueError(f"reference returned {len(lp)} log-probs for a {len(response)}-token response")
    return Collected(prompt_texts, samples, scores_result, ref_result, timings, dropped), during


def rollout_of(collected: Collected, forward, weights_of_rewards: Sequence[float]) -> Rollout:
    """The Rollout of a collected batch and the learner's forward on it (learner_forward's four tensors)."""
    logprobs, entropy, mask, values = forward
    components = torch.tensor(collected.scores, device=mask.device)  # (K, B)
    return Rollout(
        prompts=collected.prompts,
        samples=collected.samples,
        scores=torch.tensor(list(weights_of_rewards), device=mask.device) @ components,
        ref_logprobs=right_padded(collected.ref_logprobs, logprobs),
        logprobs=logprobs,
        sampler_logprobs=right_padded([s.logprobs for s in collected.samples], logprobs),
        values=values,
        entropy=entropy,
        mask=mask,
        timings=collected.timings,
        reward_components=components if len(components) > 1 else None,
    )


def collect_rollout(
    state: TrainState,
    services: Services,
    prompts: list[str],
    params: GenerationParams,
    max_staleness: int,
    on_phase: Callable[[str], None] = lambda phase: None,
    weights: Callable[[], tuple[int, dict]] | None = None,
    replicas: Sequence[PolicySampler] | None = None,
    first_share: int = 0,
) -> tuple[Rollout, int]:
    """Lockstep: generate with the current weights, then score, reference log-probs and the learner's own forward
    (timed as time/logprobs), all concurrently. Returns (the rollout, the stale samples dropped)."""

    def forward(pairs):
        start = time.perf_counter()
        result = learner_forward(state, pairs)
        return result, time.perf_counter() - start

    collected, (result, seconds) = collect_from_services(
        services, prompts, params, state.step, max_staleness, weights, replicas, first_share, on_phase, forward
    )
    collected.timings["time/logprobs"] = seconds
    return rollout_of(collected, result, services.weights_of_rewards), collected.dropped_stale


def score_all(services: Services, texts: list[tuple[str, str]]) -> list[list[float]]:
    """Every reward service's scores of the texts, concurrently: (K, B)."""
    futures = [services.pool.submit(services.call, reward, "score", texts) for reward in services.rewards]
    return [future.result() for future in futures]

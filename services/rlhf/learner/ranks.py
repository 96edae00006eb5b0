"""What the ranks of a distributed learner share and agree on, beyond the gradients FSDP2 reduces.

- Each rank collects its share of the step's prompts, from its own replicas (`replicas_of`), and the ranks then
  gather the shares (`gather_rollout`): advantages (GRPO's groups, whitening) need the whole batch.
- Anything that may fail on one rank alone (a service call) is followed by rlhf.learner.retries.on_all_ranks, so
  that every rank takes the same path to the next collective: all go on, or all stop with a checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from rlhf.core import distributed
from rlhf.learner.rollout import Rollout


def replicas_of(policies: Sequence, world: distributed.World | None = None) -> tuple[list, int]:
    """(this rank's policy replicas, the number of replica shares the lower ranks have).

    With at least as many replicas as ranks, rank r takes every world-size-th replica from r; with fewer,
    ranks share them round-robin. Shares are numbered over the whole world and seed their samples by that number,
    so one rank with replicas A, B and two ranks with A and B each draw the same samples."""
    world = world or distributed.world()
    if len(policies) >= world.size:
        counts = [len(range(r, len(policies), world.size)) for r in range(world.size)]
        return list(policies[world.rank :: world.size]), sum(counts[: world.rank])
    return [policies[world.rank % len(policies)]], world.rank


def rollout_to(rollout: Rollout, device: torch.device | str) -> Rollout:
    tensors = {
        f.name: getattr(rollout, f.name)
        for f in dataclasses.fields(rollout)
        if isinstance(getattr(rollout, f.name), torch.Tensor)
    }
    return dataclasses.replace(rollout, **{name: t.to(device) for name, t in tensors.items()})


def pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.size(1)))


def merge_rollouts(parts: Sequence[tuple[int, Rollout]]) -> Rollout:
    """One rollout of the whole batch from each rank's (first prompt number, share), in rank order."""
    samples, prompts = [], []
    for first_prompt, part in parts:
        for sample in part.samples:
            samples.append(dataclasses.replace(sample, prompt_index=sample.prompt_index + first_prompt))
        prompts += part.prompts
    width = max(part.mask.size(1) for _, part in parts)

    def cat(name: str) -> torch.Tensor:
        return torch.cat([pad_columns(getattr(part, name), width) for _, part in parts])

    timings = {name: max(part.timings.get(name, 0.0) for _, part in parts) for name in parts[0][1].timings}
    components = [part.reward_components for _, part in parts]
    return Rollout(
        prompts=prompts,
        samples=samples,
        scores=torch.cat([part.scores for _, part in parts]),
        ref_logprobs=cat("ref_logprobs"),
        logprobs=cat("logprobs"),
        sampler_logprobs=cat("sampler_logprobs"),
        values=cat("values"),
        entropy=cat("entropy"),
        mask=cat("mask"),
        timings=timings,
        reward_components=torch.cat(components, dim=1) if components[0] is not None else None,
    )


def gather_rollout(rollout: Rollout, first_prompt: int) -> Rollout:
    """Every rank's share of the step, merged into the whole batch on every rank. One process: as it is."""
    if not distributed.is_distributed():
        return rollout
    device = rollout.mask.device
    parts = distributed.all_gather_objects((first_prompt, rollout_to(rollout, "cpu")))
    return rollout_to(merge_rollouts(parts), device)

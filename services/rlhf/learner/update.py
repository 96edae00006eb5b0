"""The update: config.ppo_epochs passes of minibatch PPO over a step's rollout.

Every rank holds the whole rollout (rlhf.learner.ranks.gather_rollout) and shuffles it with the same generator,
so all ranks see the same minibatches. A minibatch is cut into --gradient-accumulation-steps micro-batches and
each micro-batch into one share per rank (a rank a short micro-batch leaves without rows runs one at weight 0:
FSDP2's forward and backward are collectives). Each share's loss is its part of the minibatch's loss (the
denominators are the minibatch's token and response counts, ppo.Totals), so the gradients summed over micro-
batches and ranks are exactly the one-process, one-batch gradient.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from rlhf.core import distributed
from rlhf.learner import ppo
from rlhf.learner.config import PPOConfig
from rlhf.learner.models import policy_forward, sequence_logprobs, value_forward
from rlhf.learner.rollout import Rollout
from rlhf.learner.state import TrainState


def share_loss(
    state: TrainState,
    config: PPOConfig,
    rollout: Rollout,
    advantages,
    returns,
    importance_weights,
    rows: torch.Tensor,
    totals: ppo.Totals,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy loss of this rank's rows of a micro-batch, plus the value loss (gae) and the KL loss
    (--kl-in loss), each as its part of the minibatch's. Returns (loss, its detached terms)."""
    prompts = [rollout.prompt_ids[i] for i in rows]
    responses = [rollout.response_ids[i] for i in rows]
    with state.autocast():
        logprobs, _, mask = policy_forward(state.policy, prompts, responses, state.pad_id)
    width = mask.size(1)  # these rows' longest response; the rest is padding
    rows = rows.to(mask.device)

    # Policy loss
    pg_loss, clipfrac, approxkl = ppo.clipped_policy_loss(
        logprobs,
        rollout.logprobs[rows, :width],
        advantages[rows, :width],
        mask,
        config.clip_range,
        None if importance_weights is None else importance_weights[rows, :width],
        config.loss_aggregation,
        totals,
    )
    loss = pg_loss
    terms = {"loss/policy": pg_loss, "policy/clipfrac": clipfrac, "policy/approxkl": approxkl}
    # Value loss
    if state.value is not None:
        with state.autocast():
            values = value_forward(state.value, prompts, responses, state.pad_id)
        vf_loss, vf_clipfrac = ppo.clipped_value_loss(
            values, rollout.values[rows, :width], returns[rows, :width], mask, config.clip_range_value, totals.tokens
        )
        loss = loss + config.vf_coef * vf_loss
        terms |= {"loss/value": vf_loss, "val/clipfrac": vf_clipfrac}
    # KL in the loss (GRPO): beta * KL(pi_RL || pi_SFT), differentiated
    if config.kl_in == "loss":
        kl_loss = ppo.kl_loss(
            logprobs,
            rollout.ref_logprobs[rows, :width],
            mask,
            state.kl_ctl.value,
            config.kl_estimator,
            config.loss_aggregation,
            totals,
            rollout.logprobs[rows, :width] if config.kl_ratio_correction else None,
        )
        loss = loss + kl_loss
        terms["loss/kl"] = kl_loss
    return loss, {name: value.detach().float() for name, value in terms.items()}


def backward(loss: torch.Tensor) -> None:
    """Gradients of this rank's part of the loss; FSDP2 averages them over the ranks, so the part is scaled by the
    world size first: the average of the scaled parts is the sum of the parts."""
    (loss * distributed.world().size).backward()


def summed_over_ranks(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The minibatch's diagnostics: each rank's parts summed over the ranks, in one collective."""
    names = sorted(terms)
    if not names:
        return {}
    total = distributed.all_reduce_sum(torch.stack([terms[name].cpu() for name in names]))
    return dict(zip(names, total.tolist(), strict=True))


def ptx_step(state: TrainState, config: PPOConfig) -> float:
    """PPO-ptx: keep the pretraining log-likelihood up, against forgetting; backward of this rank's share of
    --ptx-batch-size sequences. Returns the batch's loss (summed over ranks)."""
    texts = state.ptx.take(config.ptx_batch_size)  # the same sequences on every rank
    tokens = float(sum(max(len(t) - 1, 0) for t in texts))
    rows, weight = distributed.batch_share(len(texts))
    with state.autocast():
        logprobs, mask = sequence_logprobs(state.policy, texts[rows], state.pad_id)
    loss = ppo.ptx_loss(logprobs, mask, config.ptx_coef, tokens) * weight
    backward(loss)
    return summed_over_ranks({"loss/ptx": loss.detach().float()})["loss/ptx"]


def ppo_update(
    state: TrainState,
    config: PPOConfig,
    rollout: Rollout,
    advantages,
    returns,
    importance_weights: torch.Tensor | None = None,
) -> dict[str, float]:
    """config.ppo_epochs passes of minibatch PPO over the rollout; returns the mean diagnostics."""
    batch_size = len(rollout.samples)
    minibatch_size = max(1, batch_size // config.num_minibatches)
    microbatch_size = max(1, minibatch_size // config.gradient_accumulation_steps)
    stats = defaultdict(list)
    updates, planned = 0, config.ppo_epochs * len(range(0, batch_size, minibatch_size))
    stopped_early = False
    for _epoch in range(config.ppo_epochs):
        if stopped_early:
            break
        b_inds = torch.randperm(batch_size, generator=state.generator)
        for start in range(0, batch_size, minibatch_size):
            state.optimizer.zero_grad()
            minibatch = b_inds[start : start + minibatch_size]
            totals = ppo.Totals.of(rollout.mask[minibatch.to(rollout.mask.device)])
            parts: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
            for micro in minibatch.split(microbatch_size):
                rows, weight = distributed.batch_share(len(micro))  # a rank left without rows runs one at weight 0
                loss, terms = share_loss(
                    state, config, rollout, advantages, returns, importance_weights, micro[rows], totals
                )
                backward(loss * weight)
                for name, value in terms.items():
                    parts[name] = parts[name] + weight * value.cpu()
            terms = summed_over_ranks(parts)
            for name, value in terms.items():
                stats[name].append(value)

            # Early stop: this minibatch already sits too far from the rollout policy; skip its update
            if config.early_stop_kl is not None and terms["policy/approxkl"] > config.early_stop_kl:
                stopped_early = True
                break

            if state.ptx is not None:
                stats["loss/ptx"].append(ptx_step(state, config))

            torch.nn.utils.clip_grad_norm_(state.parameters(), config.max_grad_norm)
            state.optimizer.step()
            updates += 1
    state.scheduler.step()
    return {
        **{name: sum(values) / len(values) for name, values in stats.items()},
        "policy/update_fraction": updates / planned,
    }

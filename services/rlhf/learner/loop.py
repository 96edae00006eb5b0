"""The RL loop: rollout -> rewards with the KL penalty -> advantages -> clipped update -> weight sync.

    rlhf train ppo --model runs/sft --value-model runs/rm \
        --policy localhost:50052,localhost:50062 --reward localhost:50051 --reference localhost:50053 \
        --prompts data/prompts.jsonl --out runs/ppo --steps 100

The advantages come from GAE with a value model (PPO), or from a critic-free estimator over groups of
--samples-per-prompt samples (GRPO, RLOO, REINFORCE++; rlhf.learner.advantages).

`train` takes its services as client interfaces, so the same loop runs against gRPC clients
or in-process implementations (the benchmark's baseline, fast tests).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import grpc
import torch
from tqdm import tqdm

from rlhf.core import distributed
from rlhf.core.client import describe_rpc_error
from rlhf.core.errors import UserError
from rlhf.core.resources import PeakRSS
from rlhf.learner import ppo
from rlhf.learner.advantages import critic_free_advantages, group_std
from rlhf.learner.ahead import RolloutsAhead
from rlhf.learner.config import PPOConfig
from rlhf.learner.control import CheckpointResult, LearnerControl
from rlhf.learner.ranks import gather_rollout, replicas_of
from rlhf.learner.replicas import Services, name_of
from rlhf.learner.retries import ServiceDown, on_all_ranks
from rlhf.learner.rollout import Rollout, collect_rollout, logprob_mismatch_by_replica, sampling_params
from rlhf.learner.state import (
    TrainState,
    build_state,
    check_out_dir,
    clear_earlier_run,
    resume_state,
    save_checkpoint,
    save_final_policy,
)
from rlhf.learner.tracking import RunLog
from rlhf.learner.update import ppo_update

log = logging.getLogger("rlhf.learner")


def memory(state: TrainState, rss: PeakRSS) -> dict[str, float]:
    """The learner's memory, on the rank with the most: its peak resident set (the whole process, loading
    included), the peak within this step (rss's window; where Linux lets it be read), on CUDA the tensors'
    peak, and the bytes of its parameters and optimizer state (under FSDP2, its shards of them)."""
    models = [state.policy] + ([state.value] if state.value is not None else [])
    optimizer_tensors = [
        t
        for per_param in state.optimizer.state.values()
        for t in per_param.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    ]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    step_peak = rss.window()
    figures = {
        "memory/peak_rss_gb": rss.overall(),
        "memory/step_peak_rss_gb": -1.0 if step_peak is None else step_peak,
        "memory/parameters_gb": distributed.local_bytes(  # a shared frozen base counts once
            {id(p): p for m in models for p in m.parameters()}.values()
        ),
        "memory/optimizer_gb": distributed.local_bytes(optimizer_tensors),
        "memory/cuda_max_allocated_gb": torch.cuda.max_memory_allocated() if cuda else -1.0,
    }
    highest = distributed.all_reduce_max(torch.tensor(list(figures.values()), dtype=torch.float64)).tolist()
    return {name: value / 2**30 for name, value in zip(figures, highest, strict=True) if value >= 0}


def compute_advantages(config: PPOConfig, rollout: Rollout, scores: torch.Tensor, kl_coef: float):
    """(advantages, returns or None, per-token KL) for the step, by --advantage-estimator."""
    mask = rollout.mask
    beta_in_reward = kl_coef if config.kl_in == "reward" else 0.0
    if config.uses_critic:
        rewards, kl = ppo.kl_penalized_rewards(
            scores, rollout.logprobs, rollout.ref_logprobs, mask, beta_in_reward, config.kl_estimator
        )
        advantages, returns = ppo.gae_advantages(rewards, rollout.values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = ppo.whiten(advantages, mask)
        return advantages, returns, kl
    kl = ppo.kl_estimate(rollout.logprobs, rollout.ref_logprobs, config.kl_estimator) * mask
    advantages = critic_free_advantages(
        config.advantage_estimator,
        scores,
        kl,
        mask,
        rollout.groups,
        beta_in_reward,
        config.gamma,
        config.std_normalization,
    )
    return advantages, None, kl


def sync_weights(state: TrainState, services: Services, control: LearnerControl) -> float:
    """Publish pi_RL as version state.step (for GetWeights) and push it to every replica. Under torchrun every rank
    sends its shards to rank 0, which publishes and pushes; the others learn whether that worked."""
    start = time.perf_counter()
    weights = state.policy_weights()

    def publish_and_push() -> None:
        if distributed.world().is_main:
            control.publish_weights(state.step, weights)  # first, so a replica restarting now pulls it
            services.push_weights(weights, state.step)

    on_all_ranks(publish_and_push)
    return time.perf_counter() - start


def lockstep_rollout(state: TrainState, services: Services, config: PPOConfig, control: LearnerControl):
    """--rollout-ahead 0: collect step state.step's batch now, with the current weights; returns (rollout, how the
    flow went: the learner waits for the services except for its own forward, the services for the update)."""
    cursor = state.prompts.cursor
    prompts = state.prompts.take(config.batch_size)  # the same on every rank; each collects its share
    share = distributed.shard_rows(len(prompts))
    here = distributed.world()
    replicas, first_share = replicas_of(services.policies, here)
    republish = control.published if here.is_main else None  # rank 0 pushes to a stale replica
    try:
        rollout, dropped = collect_rollout(
            state,
            services,
            prompts[share],
            sampling_params(config, state.step),
            config.staleness_limit,
            control.set_phase,
            republish,
            replicas,
            first_share,
        )
    except BaseException:
        state.prompts.cursor = cursor  # the step did not happen: its prompts come again on resume
        raise
    t = rollout.timings
    waited = t["time/generate"] + max(0.0, max(t["time/score"], t["time/reference"]) - t["time/logprobs"])
    dropped = distributed.all_reduce_sum(torch.tensor(float(dropped))).item()
    return gather_rollout(rollout, share.start), {"rollout/dropped_stale": dropped, "time/learner_idle": waited}


def staleness(rollout: Rollout, step: int) -> dict[str, float]:
    """How many weight versions behind step `step`'s the samples were drawn with."""
    behind = torch.tensor([float(step - s.weights_version) for s in rollout.samples])
    return {"rollout/staleness_mean": behind.mean().item(), "rollout/staleness_max": behind.max().item()}


def ppo_step(state: TrainState, services: Services, config: PPOConfig, control: LearnerControl, ahead=None):
    """Rollout -> rewards with KL -> advantages -> update; returns (metrics, rollout). The rollout is collected now
    (lockstep), or taken from those collected ahead (`ahead`, a RolloutsAhead)."""
    if ahead is not None:
        rollout, flow = ahead.next_rollout(state)
    else:
        rollout, flow = lockstep_rollout(state, services, config, control)
    flow |= staleness(rollout, state.step)
    mask = rollout.mask

    # Rewards, with the KL penalty unless it goes into the loss; then advantages
    scores = rollout.scores
    if config.missing_eos_penalty is not None:
        scores = ppo.penalize_missing_eos(scores, rollout.ended_with_eos, config.missing_eos_penalty)
    kl_coef = state.kl_ctl.value
    advantages, returns, kl = compute_advantages(config, rollout, scores, kl_coef)
    # Off-policy correction: the replicas sampled with their weights, PPO's ratio starts from ours
    weights = None
    if config.importance_cap:
        weights = ppo.truncated_importance_weights(rollout.logprobs, rollout.sampler_logprobs, config.importance_cap)
    # Update
    control.set_phase("update")
    lr = state.scheduler.get_last_lr()[0]
    start = time.perf_counter()
    stats = ppo_update(state, config, rollout, advantages, returns, weights)
    update_time = time.perf_counter() - start
    flow.setdefault("time/services_idle", update_time)  # lockstep: the services wait out the update
    state.step += 1
    kl_per_sequence = kl.sum(1).mean().item()
    state.kl_ctl.update(kl_per_sequence, len(rollout.samples))
    state.kl_ctl.value = distributed.broadcast_object(state.kl_ctl.value)  # GPU reductions may differ in the last bit

    if weights is not None:
        stats["rollout/importance_weight"] = ppo.masked_mean(weights, mask).item()
        stats["rollout/importance_truncated"] = ppo.masked_mean((weights >= config.importance_cap).float(), mask).item()
    metrics = {
        "objective/reward": rollout.scores.mean().item(),
        "objective/kl": kl_per_sequence,
        "objective/entropy": ppo.masked_mean(rollout.entropy, mask).item(),
        "objective/rlhf_reward": (scores - kl_coef * kl.sum(1)).mean().item(),
        "objective/kl_coef": kl_coef,
        **stats,
        **(
            {"val/explained_variance": ppo.explained_variance(rollout.values, returns, mask).item()}
            if returns is not None
            else {}
        ),
        **(
            {f"objective/reward/{i}": component.mean().item() for i, component in enumerate(rollout.reward_components)}
            if rollout.reward_components is not None
            else {}
        ),
        **(
            {"rollout/group_reward_std": group_std(rollout.scores, rollout.groups).mean().item()}
            if config.samples_per_prompt > 1
            else {}
        ),
        "rollout/response_length": mask.sum(1).mean().item(),
        "rollout/eos_fraction": rollout.ended_with_eos.float().mean().item(),
        "rollout/weights_version": float(min(s.weights_version for s in rollout.samples)),
        # sampler vs learner log-probs of the same ids: numerics only in lockstep (~0), staleness with --rollout-ahead
        "rollout/logprob_mismatch": ppo.masked_mean((rollout.sampler_logprobs - rollout.logprobs).abs(), mask).item(),
        **logprob_mismatch_by_replica(rollout),
        "lr": lr,
        **rollout.timings,
        **flow,
        "time/update": update_time,
    }
    return metrics, rollout


def log_step(step: int, metrics: dict, rollout: Rollout, run_log: RunLog, control: LearnerControl, bar) -> None:
    """metrics.jsonl, TensorBoard, rollouts.jsonl, the control API's watchers, the log and the bar."""
    run_log.rollouts(step, rollout.rows())
    run_log.metrics(step, metrics)
    control.publish_metrics(step, metrics)
    reward, kl = metrics["objective/reward"], metrics["objective/kl"]
    log.info("step", extra={"step": step, "reward": round(reward, 4), "kl": round(kl, 4)})
    bar.update()
    bar.set_postfix(reward=f"{reward:.3f}", kl=f"{kl:.3f}")


def tokenizer_mismatch(state: TrainState, kind: str, name: str, fingerprint: str) -> str | None:
    """Why a service with this tokenizer fingerprint cannot serve this run, or None."""
    from rlhf.core.modeling import tokenizer_fingerprint

    ours = tokenizer_fingerprint(state.tokenizer)
    if fingerprint == ours:
        return None
    return (
        f"tokenizer mismatch: {kind} {name} has fingerprint {fingerprint[:12]}, "
        f"but learner --model has {ours[:12]}; every service must serve the same tokenizer"
    )


def check_tokenizers(state: TrainState, services: Services) -> None:
    """Every replica and the reference must map text to the same ids as the learner."""
    for kind, service in [*(("policy", p) for p in services.policies), ("reference", services.reference)]:
        fingerprint = services.call(service, "model_info").tokenizer_fingerprint
        if problem := tokenizer_mismatch(state, kind, name_of(service), fingerprint):
            raise UserError(problem)


def update_replicas(state: TrainState, services: Services) -> None:
    """Pick up policy replicas added since the last step (a new pod behind the headless Service) and
    drop those that went away; under torchrun rank 0 decides, and every rank follows its set. A new replica
    must answer and share the tokenizer; it gets the current weights from its own GetWeights pull at start, or
    from the learner's push if it lacks them."""

    def accept(replica) -> bool:
        try:
            problem = tokenizer_mismatch(state, "policy", name_of(replica), replica.model_info().tokenizer_fingerprint)
        except grpc.RpcError as err:
            problem = f"policy {name_of(replica)} is not answering yet ({err.code().name})"
        if problem:
            log.warning("not using a new policy replica", extra={"replica": name_of(replica), "reason": problem})
        return problem is None

    main = distributed.world().is_main
    added, removed = services.update_replicas(accept) if main else ([], [])
    if added or removed:
        log.info(
            "policy replicas changed", extra={"added": added, "removed": removed, "replicas": len(services.policies)}
        )
    if distributed.is_distributed():  # rank 0 discovers; every rank uses its set, in its order
        services.adopt(distributed.broadcast_object([name_of(p) for p in services.policies] if main else None))


def serve_requests(state: TrainState, control: LearnerControl, config: PPOConfig) -> bool:
    """Answer queued SaveCheckpoint/Stop requests (rank 0's control API, or SIGTERM on any rank): the ranks agree,
    all checkpoint together; True if the run should stop."""
    checkpoints, stops = control.take_requests()
    save, stop = distributed.all_reduce_max(torch.tensor([float(bool(checkpoints or stops)), float(bool(stops))]))
    if save:
        control.set_phase("checkpoint")
        result = CheckpointResult(str(save_checkpoint(state, config.out, config.keep_checkpoints)), state.step)
        for future in checkpoints + stops:
            future.set_result(result)
    return bool(stop)


def check_world(config: PPOConfig, world: distributed.World) -> None:
    """Every rank needs prompts of its own to collect a share of the rollout."""
    if config.batch_size < world.size:
        raise UserError(
            f"--batch-size is {config.batch_size}, fewer than the {world.size} ranks: every rank "
            "needs a share of the prompts"
        )


def train(config: PPOConfig, services: Services, control: LearnerControl | None = None) -> TrainState:
    """Run PPO from the SFT model (or --resume) up to config.steps; returns the final state. Under torchrun every
    rank runs this; rank 0 alone logs and pushes weights."""
    control = control or LearnerControl(config.steps, config.out)
    here = distributed.world()
    check_world(config, here)
    check_out_dir(config)
    state = resume_state(config) if config.resume else build_state(config)
    check_tokenizers(state, services)
    distributed.barrier()  # every rank has loaded (--model may lie under --out) before anything is deleted
    if config.overwrite and here.is_main:
        clear_earlier_run(config.out)  # only now that the new run has loaded and checked out
    Path(config.out).mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    run_log = RunLog(Path(config.out), state.step, config.log_rollouts) if here.is_main else None
    rss = PeakRSS()
    ahead = None
    try:
        control.set_phase("weight_sync")
        sync_weights(state, services, control)  # version state.step everywhere before sampling
        if config.rollout_ahead:
            ahead = RolloutsAhead(state, services, config, control)  # from now on, batches are collected ahead
        with tqdm(
            total=config.steps, initial=state.step, desc="ppo", unit="step", disable=None if here.is_main else True
        ) as bar:
            while state.step < config.steps:
                step_start = time.perf_counter()
                rss.start_window()
                update_replicas(state, services)
                metrics, rollout = ppo_step(state, services, config, control, ahead)
                try:
                    control.set_phase("weight_sync")
                    synced = ahead.sync_weights(state) if ahead else sync_weights(state, services, control)
                    metrics["time/weight_sync"] = synced
                finally:  # the update happened: the step is logged even if the sync failed
                    metrics["time/step"] = time.perf_counter() - step_start
                    metrics |= memory(state, rss)
                    if run_log is not None:
                        log_step(state.step, metrics, rollout, run_log, control, bar)
                if state.step % config.save_every == 0:
                    control.set_phase("checkpoint")
                    save_checkpoint(state, config.out, config.keep_checkpoints)
                if serve_requests(state, control, config):
                    log.info("stopping on request", extra={"step": state.step})
                    break
        if ahead is not None:
            ahead.wait_for_push()  # the replicas serve the final weights
    except (ServiceDown, grpc.RpcError) as err:
        path = save_checkpoint(state, config.out, config.keep_checkpoints)
        detail = describe_rpc_error(err) if isinstance(err, grpc.RpcError) else str(err)
        raise UserError(f"{detail}. Saved {path}; continue with --resume") from err
    finally:
        if ahead is not None:
            ahead.close()
        if run_log is not None:
            run_log.close()
        control.finish()
    save_checkpoint(state, config.out, config.keep_checkpoints)
    if state.step >= config.steps:
        save_final_policy(state, config.out, config.model)
    return state

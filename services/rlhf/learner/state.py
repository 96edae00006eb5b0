"""Everything a run carries from step to step; its checkpoints are in rlhf.learner.checkpoints.

Under torchrun every rank holds a TrainState whose models are FSDP2-sharded over the world (rlhf.core.distributed);
the prompt and ptx cursors, beta and the minibatch generator are the same on every rank.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.core import distributed
from rlhf.core.chat import use_chat_template
from rlhf.core.errors import UserError
from rlhf.core.modeling import context_length, load_tokenizer, resolve_device
from rlhf.core.training import (
    TrainingOptions,
    autocast,
    base_model,
    check_precision,
    disable_dropout,
    is_peft,
    lora_factors,
    make_optimizer,
    name_base,
    prepare_model,
    save_trained,
    trainable_parameters,
    unsharded,
    weights_dtype,
)
from rlhf.learner import ppo
from rlhf.learner.checkpoints import (  # noqa: F401 - save_checkpoint, latest_checkpoint: re-exported
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from rlhf.learner.config import PPOConfig
from rlhf.learner.data import CursorSampler, load_prompts, load_ptx_sequences
from rlhf.learner.models import load_policy, load_value_model, share_frozen_backbone, shares_parameters

log = logging.getLogger("rlhf.learner")


@dataclass
class TrainState:
    policy: torch.nn.Module
    value: torch.nn.Module | None  # the critic; None for the critic-free estimators
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    kl_ctl: ppo.FixedKLController | ppo.AdaptiveKLController
    prompts: CursorSampler
    ptx: CursorSampler | None
    generator: torch.Generator  # minibatch shuffling; its own, so nothing else's sampling moves it
    step: int = 0  # PPO steps completed; also the version of the current policy weights

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    options: TrainingOptions = dataclasses.field(default_factory=TrainingOptions)  # precision, LoRA

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer trains: every weight, or with LoRA the adapters and heads."""
        return trainable_parameters(self.policy) + (trainable_parameters(self.value) if self.value is not None else [])

    def autocast(self):
        return autocast(self.options, next(self.policy.parameters()).device)

    def policy_weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of what the replicas get, safe to stream while training moves on: pi_RL's weights, or
        with LoRA only the adapter's factors (the replicas keep their base weights and merge them). Under
        torchrun every rank must call it: each tensor is gathered from its shards in turn, and only rank 0 keeps
        the copy (the others get {}), so no rank holds more than its shards and, on rank 0, one whole copy."""
        keep = distributed.world().is_main
        tensors = lora_factors(self.policy) if is_peft(self.policy) else self.policy.state_dict()
        out = {}
        for name, t in tensors.items():
            whole = distributed.full_tensor(t.detach())
            if keep:
                out[name] = whole.to("cpu", copy=True)
        return out


def build_state(config: PPOConfig) -> TrainState:
    """A fresh state: pi_RL from the SFT dir; with gae, the critic from --value-model (or the SFT dir). Under
    torchrun both are sharded over the ranks before the optimizer is built on their shards."""
    device = resolve_device(distributed.rank_device(config.device))
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    check_precision(config, device)
    tokenizer = use_chat_template(load_tokenizer(config.model), config.chat_template)
    dtype = weights_dtype(config)  # loaded as trained: bf16-true never holds a float32 copy
    # Under torchrun the models load on the CPU and move to the GPU shard by shard (distributed.shard).
    load_on = torch.device("cpu") if distributed.is_distributed() else device
    policy = trainable(load_policy(config.model, load_on, dtype), config, "causal-lm", config.model, device)
    value = None
    if config.uses_critic:
        value_base = config.value_model or config.model
        value = load_value_model(value_base, load_on, dtype)
        value.config.pad_token_id = tokenizer.pad_token_id  # its forward pools the last non-pad position
        if config.uses_lora and not distributed.is_distributed():  # FSDP2 shards each model on its own
            freed = share_frozen_backbone(value, policy)
            if freed:
                log.info("the value model shares the policy's frozen base", extra={"freed_gb": freed / 2**30})
        value = trainable(value, config, "score", value_base, device)
    if config.value_model and not config.uses_critic:
        log.warning(
            "--value-model is ignored: a critic-free estimator builds no value model",
            extra={"advantage_estimator": config.advantage_estimator},
        )
    trained = trainable_parameters(policy) + (trainable_parameters(value) if value is not None else [])
    optimizer = make_optimizer(trained, config, lr=config.lr, eps=config.adam_eps)
    # CleanRL's annealing: the learning rate falls linearly to 0 at the last step.
    schedule = (lambda done: max(0.0, 1.0 - done / config.steps)) if config.anneal_lr else (lambda done: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if config.target_kl is not None:
        kl_ctl = ppo.AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
    else:
        kl_ctl = ppo.FixedKLController(config.kl_coef)
    # A prompt must leave room for a whole response, within --max-length and the model's context.
    max_prompt_tokens = min(config.max_length, context_length(base_model(policy).config)) - config.max_new_tokens
    prompts = load_prompts(config.prompts, tokenizer, max_prompt_tokens)
    ptx = None
    if config.ptx_data:
        ptx = CursorSampler(load_ptx_sequences(config.ptx_data, tokenizer, config.max_length), config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed)
    return TrainState(
        policy,
        value,
        tokenizer,
        optimizer,
        scheduler,
        kl_ctl,
        CursorSampler(prompts, config.seed),
        ptx,
        generator,
        options=config,  # a PPOConfig is TrainingOptions: precision, LoRA
    )


def trainable(model: torch.nn.Module, config: PPOConfig, task, base: str, device: torch.device) -> torch.nn.Module:
    """The model as --precision, --gradient-checkpointing and --lora-* train it. It stays in eval mode (dropout
    would make the learner's log-probs disagree with the sampler's), except under gradient checkpointing, which
    only acts in train mode: there dropout is switched off instead. Under torchrun, sharded over the ranks."""
    model = prepare_model(model, config, task)
    if is_peft(model):
        name_base(model, base)  # what its saved adapter names as its base
    if config.gradient_checkpointing:
        disable_dropout(model)
        model.train()
    else:
        model.eval()
    return distributed.shard(model, device)


RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "rollouts.jsonl", "tb", "policy")


def check_out_dir(config: PPOConfig) -> None:
    """Refuse, before anything loads, a --resume without a checkpoint, and a fresh run over an earlier one
    in --out (its logs and checkpoints would mix with the new) unless --overwrite."""
    out = Path(config.out)
    if config.resume:
        if latest_checkpoint(out) is None:
            raise UserError(f"--resume: no checkpoint under {checkpoint_root(out)}")
    elif not config.overwrite and any((out / name).exists() for name in RUN_OUTPUTS):
        raise UserError(
            f"--out {out} holds an earlier run: continue it with --resume, choose a new --out, "
            "or start over with --overwrite"
        )


def clear_earlier_run(out: str | Path) -> None:
    """--overwrite: delete an earlier run's checkpoints, logs and final policy from `out`."""
    earlier = [Path(out) / name for name in RUN_OUTPUTS if (Path(out) / name).exists()]
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if earlier:
        log.info("overwriting an earlier run", extra={"out": str(out)})


def resume_state(config: PPOConfig) -> TrainState:
    """The state saved in the newest checkpoint under --out, with the current flags, at this run's world size."""
    path = latest_checkpoint(config.out)
    if path is None:
        raise UserError(f"--resume: no checkpoint under {checkpoint_root(config.out)}")
    if distributed.world().is_main:
        for leftover in checkpoint_root(config.out).glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a save cut short by SIGKILL
    saved = read_trainer_state(path)
    if saved.get("critic", True) != config.uses_critic:
        had = "gae (with a value model)" if saved.get("critic", True) else "a critic-free estimator"
        raise UserError(
            f"--resume: {path} was trained with {had}; resume it with the same kind of --advantage-estimator"
        )
    if saved.get("lora_r", 0) != config.lora_r:
        raise UserError(
            f"--resume: {path} was trained with --lora-r {saved.get('lora_r', 0)}; resume it with the same --lora-r"
        )
    state = build_state(config)
    load_checkpoint(state, path)
    return state


def save_final_policy(state: TrainState, out: str | Path, base: str) -> Path | None:
    """OUT/policy: pi_RL as a standard model dir with its tokenizer, replaced atomically; with LoRA the adapter,
    and the merged standard dir in OUT/policy/merged (rlhf.core.training.save_trained). Training is over: with
    LoRA the merge happens in place. Under torchrun every rank sends its shards and rank 0 writes an unsharded
    copy (the others return None, and go on to exit: rank 0's writing may outlast --dist-timeout)."""

    def rebuild() -> torch.nn.Module:
        return prepare_model(
            load_policy(base, torch.device("cpu"), weights_dtype(state.options)), state.options, "causal-lm"
        )

    whole = unsharded(state.policy, rebuild)
    if whole is None:
        return None
    shared = state.value is not None and shares_parameters(state.value, whole)
    path = save_trained(whole, state.tokenizer, Path(out) / "policy", state.options, base=base)
    if shared and state.options.merge:  # only LoRA runs share a base
        state.value = None  # the in-place merge wrote the policy's adapter into the base the value model shared
    return path

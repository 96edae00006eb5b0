"""Everything a run carries from step to step, and its checkpoints.

    OUT/checkpoints/step-000050/policy/            pi_RL, a standard model dir with its tokenizer
    OUT/checkpoints/step-000050/value/             the critic (sequence classification, 1 label), with gae
    OUT/checkpoints/step-000050/trainer_state.pt   optimizer, scheduler, beta, RNG, cursors, step
    OUT/checkpoints/latest                         name of the newest complete checkpoint

A checkpoint is written under a temporary name and renamed into place, and `latest` is replaced
atomically after it, so a SIGKILL at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.core.errors import UserError
from rlhf.core.files import write_text_atomic
from rlhf.core.modeling import context_length, load_tokenizer, resolve_device
from rlhf.core.training import (
    TrainingOptions,
    autocast,
    check_precision,
    disable_dropout,
    is_peft,
    lora_factors,
    make_optimizer,
    name_base,
    prepare_model,
    save_trained,
    trainable_parameters,
    weights_dtype,
)
from rlhf.learner import ppo
from rlhf.learner.config import PPOConfig
from rlhf.learner.data import CursorSampler, load_prompts, load_ptx_sequences
from rlhf.learner.models import load_policy, load_value_model

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
        with LoRA only the adapter's factors (the replicas keep their base weights and merge them)."""
        tensors = lora_factors(self.policy) if is_peft(self.policy) else self.policy.state_dict()
        return {name: t.detach().to("cpu", copy=True) for name, t in tensors.items()}


def build_state(config: PPOConfig, policy_dir: str | None = None, value_dir: str | None = None) -> TrainState:
    """A fresh state: pi_RL from the SFT dir; with gae, the critic from --value-model (or the SFT dir)."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    check_precision(config, device)
    tokenizer = load_tokenizer(policy_dir or config.model)
    # With LoRA a checkpoint holds adapters: the bases come from --model and --value-model again.
    lora_resume = config.uses_lora and policy_dir is not None
    dtype = weights_dtype(config)  # loaded as trained: bf16-true never holds a float32 copy
    policy = trainable(load_policy(config.model if lora_resume else policy_dir or config.model, device, dtype),
                       config, "causal-lm", policy_dir if lora_resume else None, base=config.model)
    value = None
    if config.uses_critic:
        value_base = config.value_model or config.model
        value = trainable(load_value_model(value_base if lora_resume else value_dir or value_base, device, dtype),
                          config, "score", value_dir if lora_resume else None, base=value_base)
    if config.value_model and not config.uses_critic and policy_dir is None:
        log.warning("--value-model is ignored: a critic-free estimator builds no value model",
                    extra={"advantage_estimator": config.advantage_estimator})
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
    max_prompt_tokens = min(config.max_length, context_length(policy.config)) - config.max_new_tokens
    prompts = load_prompts(config.prompts, tokenizer, max_prompt_tokens)
    ptx = None
    if config.ptx_data:
        ptx = CursorSampler(load_ptx_sequences(config.ptx_data, tokenizer, config.max_length), config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed)
    return TrainState(
        policy, value, tokenizer, optimizer, scheduler, kl_ctl, CursorSampler(prompts, config.seed), ptx, generator,
        options=config,  # a PPOConfig is TrainingOptions: precision, LoRA
    )


def trainable(model: torch.nn.Module, config: PPOConfig, task, adapter: str | None, base: str) -> torch.nn.Module:
    """The model as --precision, --gradient-checkpointing and --lora-* train it. It stays in eval mode (dropout
    would make the learner's log-probs disagree with the sampler's), except under gradient checkpointing, which
    only acts in train mode: there dropout is switched off instead."""
    model = prepare_model(model, config, task, adapter=adapter)
    if is_peft(model):
        name_base(model, base)  # what its checkpointed adapter names as its base
    if config.gradient_checkpointing:
        disable_dropout(model)
        return model.train()
    return model.eval()


def checkpoint_root(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(state: TrainState, out: str | Path, keep: int = 2) -> Path:
    """Write OUT/checkpoints/step-N atomically, point `latest` at it, and prune old ones."""
    root = checkpoint_root(out)
    final = root / f"step-{state.step:06d}"
    if final.exists():
        return final  # this step is already saved
    tmp = root / f".tmp-step-{state.step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    state.policy.save_pretrained(tmp / "policy")
    state.tokenizer.save_pretrained(tmp / "policy")
    if state.value is not None:
        state.value.save_pretrained(tmp / "value")
    torch.save(
        {
            "step": state.step,
            "critic": state.value is not None,
            "lora_r": state.options.lora_r,  # what the policy and value dirs hold: whole models, or adapters
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "kl_coef": state.kl_ctl.value,
            "prompt_cursor": state.prompts.cursor,
            "ptx_cursor": state.ptx.cursor if state.ptx else 0,
            "rng": {"shuffle": state.generator.get_state(), "torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        },
        tmp / "trainer_state.pt",
    )
    os.rename(tmp, final)
    write_text_atomic(root / "latest", final.name)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved", extra={"step": state.step, "path": str(final)})
    return final


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest step-N dir."""
    root = checkpoint_root(out)
    pointer = root / "latest"
    if pointer.exists() and (root / pointer.read_text().strip() / "trainer_state.pt").exists():
        return root / pointer.read_text().strip()
    complete = sorted(p for p in root.glob("step-*") if (p / "trainer_state.pt").exists())
    return complete[-1] if complete else None


RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "rollouts.jsonl", "tb", "policy")


def check_out_dir(config: PPOConfig) -> None:
    """Refuse, before anything loads, a --resume without a checkpoint, and a fresh run over an earlier one
    in --out (its logs and checkpoints would mix with the new) unless --overwrite."""
    out = Path(config.out)
    if config.resume:
        if latest_checkpoint(out) is None:
            raise UserError(f"--resume: no checkpoint under {checkpoint_root(out)}")
    elif not config.overwrite and any((out / name).exists() for name in RUN_OUTPUTS):
        raise UserError(f"--out {out} holds an earlier run: continue it with --resume, choose a new --out, "
                        "or start over with --overwrite")


def clear_earlier_run(out: str | Path) -> None:
    """--overwrite: delete an earlier run's checkpoints, logs and final policy from `out`."""
    earlier = [Path(out) / name for name in RUN_OUTPUTS if (Path(out) / name).exists()]
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if earlier:
        log.info("overwriting an earlier run", extra={"out": str(out)})


def resume_state(config: PPOConfig) -> TrainState:
    """The state saved in the newest checkpoint under --out, with the current flags."""
    path = latest_checkpoint(config.out)
    if path is None:
        raise UserError(f"--resume: no checkpoint under {checkpoint_root(config.out)}")
    for leftover in checkpoint_root(config.out).glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # a save cut short by SIGKILL
    saved = torch.load(path / "trainer_state.pt", weights_only=True)
    if saved.get("critic", True) != config.uses_critic:
        had = "gae (with a value model)" if saved.get("critic", True) else "a critic-free estimator"
        raise UserError(f"--resume: {path} was trained with {had}; resume it with the same kind of "
                        "--advantage-estimator")
    if saved.get("lora_r", 0) != config.lora_r:
        raise UserError(f"--resume: {path} was trained with --lora-r {saved.get('lora_r', 0)}; resume it with the "
                        "same --lora-r")
    state = build_state(config, policy_dir=str(path / "policy"), value_dir=str(path / "value"))
    state.step = saved["step"]
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.kl_ctl.value = saved["kl_coef"]
    state.prompts.cursor = saved["prompt_cursor"]
    if state.ptx:
        state.ptx.cursor = saved["ptx_cursor"]
    state.generator.set_state(saved["rng"]["shuffle"])
    torch.set_rng_state(saved["rng"]["torch"])
    random.setstate(saved["rng"]["python"])
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    log.info("resumed", extra={"step": state.step, "path": str(path)})
    return state


def save_final_policy(state: TrainState, out: str | Path, base: str) -> Path:
    """OUT/policy: pi_RL as a standard model dir with its tokenizer, replaced atomically; with LoRA the adapter,
    and the merged standard dir in OUT/policy/merged (rlhf.core.training.save_trained). Training is over: with
    LoRA the merge happens in place."""
    return save_trained(state.policy, state.tokenizer, Path(out) / "policy", state.options, base=base)


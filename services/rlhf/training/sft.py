"""Supervised fine-tuning: a pretrained causal LM learns to continue prompts with demonstrated responses.

    rlhf train sft --model models/base --data data/sft.jsonl --out models/sft [--epochs 1 --lr 5e-5]
    torchrun --nproc-per-node 4 --local-ranks-filter 0 -m rlhf train sft ...    # data-parallel, FSDP2

Each JSONL line is {"prompt", "response"} ("completion" is accepted for "response"), or a conversation:
{"messages": [...]} or {"prompt": [messages], "completion": [messages]} (rlhf.training.sft_data), rendered
with the model's chat template (or --chat-template). The loss is next-token cross-entropy on the response
tokens only (the assistant turns, the completion; --loss-on moves it): prompt and padding positions get the
label -100 and drop out (rlhf.training.losses). Prompt and response are tokenized separately, EOS closes the response,
and over-long pairs keep the whole response and the end of the prompt (rlhf.core.text), the
same ids the policy service and the learner see. One epoch by default, because more overfits.

Under torchrun the model is sharded over the ranks (FSDP2) and each step's --batch-size pairs are split between
them; the gradient, the losses reported and the saved dir are those of one process on the same batches (up to
float rounding, and dropout's random masks, which fall on other rows).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.core.chat import use_chat_template
from rlhf.core.distributed import (
    all_reduce_sum,
    batch_share,
    close_world,
    init_world,
    is_distributed,
    rank_device,
    shard,
    world,
)
from rlhf.core.errors import UserError
from rlhf.core.text import Encoded
from rlhf.core.training import (
    TrainingOptions,
    autocast,
    check_precision,
    make_optimizer,
    optimizer_step,
    prepare_model,
    save_trained,
    trainable_parameters,
    unsharded,
    weights_dtype,
)
from rlhf.training.config import SFTConfig
from rlhf.training.losses import IGNORE, response_nll_sum
from rlhf.training.sft_data import Example, SFTRow, as_example, check_loss_on, encode_row, load_rows

log = logging.getLogger("rlhf.sft")


@dataclass
class SFTResult:
    out: Path
    train_examples: int
    eval_examples: int
    eval_loss_before: float  # mean response-token loss on the held-out pairs, before training
    eval_loss_after: float
    train_loss: float  # mean over the last epoch's batches


def collate(examples: Sequence[Example | Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, attention_mask, and labels with -100 on untrained tokens and padding."""
    examples = [as_example(e) if isinstance(e, Encoded) else e for e in examples]
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(e.trained), torch.tensor(e.input_ids), IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def response_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the labelled (response) tokens, and how many there are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    return response_nll_sum(logits, batch["labels"])


def summed_over_ranks(*values: float, device: torch.device) -> list[float]:
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def batch_loss(
    model: torch.nn.Module, examples: Sequence[Example | Encoded], pad_id: int, options: TrainingOptions
) -> tuple[torch.Tensor, float]:
    """What this rank backpropagates for one step's batch, and the batch's mean loss per response token.

    The rank forwards its share of the pairs; its summed loss is divided by the whole batch's token count and
    multiplied by the world size, since FSDP2 averages the ranks' gradients: the one-process gradient results."""
    device = next(model.parameters()).device
    rows, weight = batch_share(len(examples))
    batch = {k: v.to(device) for k, v in collate(examples[rows], pad_id).items()}
    with autocast(options, device):
        loss_sum, n_tokens = response_loss_sum(model, batch)
    total, tokens = summed_over_ranks(loss_sum.item() * weight, n_tokens * weight, device=device)
    tokens = max(tokens, 1.0)
    return loss_sum * (weight * world().size) / tokens, total / tokens


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    examples: Sequence[Example | Encoded],
    pad_id: int,
    batch_size: int,
    options: TrainingOptions | None = None,
) -> float:
    """Mean loss per response token over examples (nan when there are none); under torchrun each rank forwards
    its share of every batch and all get the figure for all the examples."""
    options = options or TrainingOptions()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        rows, weight = batch_share(len(chunk))
        batch = {k: v.to(device) for k, v in collate(chunk[rows], pad_id).items()}
        with autocast(options, device):
            loss, n = response_loss_sum(model, batch)
        total, count = total + float(loss) * weight, count + n * weight
    total, count = summed_over_ranks(total, count, device=device)
    model.train(was_training)
    return total / count if count else math.nan


def split(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    shuffled = examples[:]
    random.Random(seed).shuffle(shuffled)
    n_eval = min(len(shuffled) - 1, round(len(shuffled) * eval_fraction)) if eval_fraction > 0 else 0
    return shuffled[n_eval:], shuffled[:n_eval]


def train_sft(config: SFTConfig, progress: bool = True) -> SFTResult:
    if config.epochs < 1 or config.batch_size < 1 or not 0 <= config.eval_fraction < 1:
        raise UserError("need --epochs >= 1, --batch-size >= 1 and 0 <= --eval-fraction < 1")
    config.check_training_options()
    check_loss_on(config.loss_on)
    pairs = load_rows(config.data)  # before any model loads: a bad or empty file fails at once
    here = init_world(config.device, config.dist_timeout)  # a no-op outside torchrun
    try:
        return fit(config, pairs, progress and here.is_main)
    finally:
        close_world()


def load_model(config: SFTConfig, device: torch.device) -> torch.nn.Module:
    from rlhf.core.modeling import load_causal_lm

    return prepare_model(load_causal_lm(config.model, device, weights_dtype(config)), config, "causal-lm")


def fit(config: SFTConfig, pairs: list[SFTRow], progress: bool) -> SFTResult:
    from tqdm.auto import tqdm

    from rlhf.core.modeling import context_length, load_tokenizer, resolve_device

    torch.manual_seed(config.seed)  # the same on every rank: the same LoRA init everywhere
    device = resolve_device(rank_device(config.device))
    check_precision(config, device)
    tokenizer = use_chat_template(load_tokenizer(config.model), config.chat_template)
    # Under torchrun the model loads on the CPU and moves to the GPU shard by shard (rlhf.core.distributed.shard).
    model = shard(load_model(config, torch.device("cpu") if is_distributed() else device), device)
    max_length = min(config.max_length, context_length(model.config))
    examples = [encode_row(tokenizer, row, max_length, config.loss_on) for row in pairs]
    train, held_out = split(examples, config.eval_fraction, config.seed)
    pad_id = tokenizer.pad_token_id
    main = world().is_main

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = make_optimizer(trainable_parameters(model), config, lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    before = eval_loss(model, held_out, pad_id, config.batch_size, config)
    if main:
        log.info(
            "sft start",
            extra={
                "train": len(train),
                "eval": len(held_out),
                "steps": total_steps,
                "eval_loss": before,
                "world_size": world().size,
            },
        )

    order = torch.Generator().manual_seed(config.seed)
    model.train()
    bar = tqdm(total=total_steps, desc="sft", unit="step", disable=not progress)
    epoch_losses: list[float] = []
    for _epoch in range(config.epochs):
        permutation = torch.randperm(len(train), generator=order).tolist()
        epoch_losses = []
        for start in range(0, len(train), config.batch_size):
            batch = [train[i] for i in permutation[start : start + config.batch_size]]
            loss, mean_loss = batch_loss(model, batch, pad_id, config)
            optimizer_step(optimizer, loss, model, config.max_grad_norm)
            schedule.step()
            epoch_losses.append(mean_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}")
    bar.close()
    model.eval()
    after = eval_loss(model, held_out, pad_id, config.batch_size, config)
    whole = unsharded(model, lambda: load_model(config, torch.device("cpu")))  # rank 0's; None elsewhere
    out = save_trained(whole, tokenizer, config.out, config, base=config.model) if whole is not None else None
    result = SFTResult(
        out or Path(config.out), len(train), len(held_out), before, after, sum(epoch_losses) / len(epoch_losses)
    )
    if main:
        log.info("sft done", extra={"out": str(out), "eval_loss_before": before, "eval_loss_after": after})
    return result

"""Reward-model training: K-wise rankings -> r_theta, normalized so training completions score mean 0.

    rlhf tiny-model --out models/tiny && rlhf data synth --out data
    rlhf train rm --model models/tiny --data data/preferences.jsonl --out models/rm --epochs 3

Steps: load the LM as a one-label sequence classifier; per batch of prompts, encode each distinct
(prompt, response) once and apply the K-wise loss over all C(K,2) comparisons; report held-out
pairwise accuracy; fold the mean training reward into a bias; save the model dir atomically.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rlhf.core.errors import UserError
from rlhf.core.logprobs import pad_right
from rlhf.core.modeling import load_tokenizer, resolve_device
from rlhf.core.text import Encoded, encode_pairs
from rlhf.core.training import (
    TrainingOptions,
    autocast,
    base_model,
    check_precision,
    disable_dropout,
    is_peft,
    make_optimizer,
    optimizer_step,
    prepare_model,
    save_trained,
    trainable_parameters,
    weights_dtype,
)
from rlhf.reward.config import RewardTrainConfig
from rlhf.reward.data import ComparisonBatch, collate, completions, load_rankings, prompt_batches, split_rankings
from rlhf.reward.loss import kwise_loss, pairwise_accuracy
from rlhf.reward.model import OFFSET_KEY, RewardScorer, load_sequence_classifier, reward_forward
from rlhf.reward.normalize import fold_offset, offset_modules

log = logging.getLogger("rlhf.reward.train")


@dataclass
class TrainResult:
    out: Path
    eval_accuracy: float | None
    eval_comparisons: int
    reference_mean_before: float
    reference_mean_after: float
    folded_into: str


def train_reward_model(config: RewardTrainConfig, progress: bool = True) -> TrainResult:
    rankings = load_rankings(config.data)
    if not rankings:
        raise UserError(f"no preference rows in {config.data}")
    train_set, eval_set = split_rankings(rankings, config.eval_fraction, config.seed)
    config.check_training_options()
    device = resolve_device(config.device)
    check_precision(config, device)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    model = load_sequence_classifier(config.model, tokenizer, device, weights_dtype(config))
    # Dropout off (as TRL's reward trainer does): with it on, the tiny model learns the synthetic task's
    # bag-of-words part (the adjectives) but not the prompt-response relation (on topic?).
    disable_dropout(model)
    # With LoRA the score head trains in full (peft does that for a classifier), and so does the final norm
    # when the mean-0 offset must go there: then the adapter alone carries the normalization.
    probe = pad_right([tokenizer("probe").input_ids], tokenizer.pad_token_id, device)
    model = prepare_model(model, config, "score", offset_modules(model, *probe) if config.uses_lora else ())
    scorer = RewardScorer(model, tokenizer, options=config)
    max_length = config.max_length or scorer.max_length
    # Every distinct (prompt, response) is tokenized once, up front, not once per epoch.
    items = completions(rankings)
    encoded = dict(zip(items, encode_pairs(tokenizer, items, max_length), strict=True))

    rng = random.Random(config.seed)
    steps = config.epochs * len(prompt_batches(train_set, config.batch_size))
    # --adam-beta2 0.95 (as in GPT-3 and nanoGPT): with 0.999 the tiny model learns the synthetic task's
    # prompt-response relation (is the answer on topic?) later, and for some seeds not at all.
    optimizer = make_optimizer(
        trainable_parameters(model), config, lr=config.lr, betas=(0.9, config.adam_beta2),
        weight_decay=config.weight_decay,
    )
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    bar = tqdm(total=steps, desc="reward model", unit="batch", disable=not progress, dynamic_ncols=True)
    for epoch in range(config.epochs):
        model.train()
        for batch in prompt_batches(train_set, config.batch_size, rng):
            loss = train_step(model, optimizer, batch, encoded, tokenizer.pad_token_id, config)
            schedule.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
        model.eval()
        if epoch + 1 == config.epochs:
            bar.close()  # before the last epoch's line, so the finished bar is not drawn again below it
        if eval_set:
            accuracy, n = evaluate(scorer, eval_set, encoded)
            tqdm.write(f"epoch {epoch + 1}: held-out pairwise accuracy {accuracy:.4f} ({n} comparisons)")
    bar.close()

    accuracy, n_eval = evaluate(scorer, eval_set, encoded) if eval_set else (None, 0)
    before, after, where = normalize(scorer, [encoded[item] for item in completions(train_set)])
    log.info("normalized", extra={"reference_mean_before": before, "reference_mean_after": after, "folded": where})
    # An offset kept in config.json (RMSNorm models: no bias to fold it into) must travel with an adapter too.
    offset = getattr(base_model(model).config, OFFSET_KEY, None)
    save_trained(model, tokenizer, config.out, config, base=config.model,
                 config_overrides={OFFSET_KEY: offset} if offset is not None and is_peft(model) else None)
    return TrainResult(Path(config.out), accuracy, n_eval, before, after, where)


def train_step(model, optimizer, batch: ComparisonBatch, encoded: dict[tuple[str, str], Encoded], pad_id: int,
               options: TrainingOptions | None = None) -> float:
    """One update on a batch of whole prompts: each distinct item forwarded once, all comparisons in the loss."""
    device = next(model.parameters()).device
    ids, attention = pad_right([encoded[item].input_ids for item in batch.items], pad_id, device)  # (N, T)
    winners, losers, group = (torch.tensor(v, device=device) for v in (batch.winners, batch.losers, batch.group))
    with autocast(options or TrainingOptions(), device):
        rewards = reward_forward(model, ids, attention)  # (N,)
    loss = kwise_loss(rewards, winners, losers, group, batch.num_prompts)
    optimizer_step(optimizer, loss, model, max_grad_norm=1.0)
    return loss.item()


def evaluate(scorer: RewardScorer, rankings, encoded: dict[tuple[str, str], Encoded]) -> tuple[float, int]:
    """Pairwise accuracy against the labels over every comparison of the rankings."""
    batch = collate(rankings)
    rewards = torch.tensor(scorer.score_encoded([encoded[item] for item in batch.items]))
    correct, total = pairwise_accuracy(rewards, torch.tensor(batch.winners), torch.tensor(batch.losers))
    return correct / total, total


def normalize(scorer: RewardScorer, reference: list[Encoded]) -> tuple[float, float, str]:
    """Fold the mean reward over the reference completions into a bias; returns (before, after, where)."""
    mean = lambda: sum(scorer.score_encoded(reference)) / len(reference)  # noqa: E731
    before = mean()
    probe = pad_right([e.input_ids for e in reference[:4]], scorer.tokenizer.pad_token_id, scorer.device)
    where = fold_offset(scorer.model, before, *probe)
    return before, mean(), where

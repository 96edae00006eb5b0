"""Reward-model training: K-wise rankings -> r_theta, normalized so training completions score mean 0.

    rlhf tiny-model --out models/tiny && rlhf data synth --out data
    rlhf train rm --model models/tiny --data data/preferences.jsonl --out models/rm --epochs 3
    torchrun --nproc-per-node 4 --local-ranks-filter 0 -m rlhf train rm ...    # data-parallel, FSDP2

Steps: load the LM as a one-label sequence classifier; per batch of prompts, encode each distinct
(prompt, response) once and apply the K-wise loss over all C(K,2) comparisons; report held-out
pairwise accuracy; fold the mean training reward into a bias; save the model dir atomically.

Under torchrun the model is sharded over the ranks (FSDP2): each batch's prompts, the held-out scoring and the
normalization's scoring are split between them, so the gradients, the figures and the saved dir are those of
one process (up to float rounding). The offset is folded into the shards on every rank, then gathered and saved.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rlhf.core.batching import by_length_chunks
from rlhf.core.chat import use_chat_template
from rlhf.core.distributed import (
    all_gather_objects,
    all_reduce_sum,
    batch_share,
    close_world,
    init_world,
    is_distributed,
    rank_device,
    reshard,
    shard,
    shard_rows,
    world,
)
from rlhf.core.errors import UserError
from rlhf.core.logprobs import pad_right
from rlhf.core.modeling import load_tokenizer, resolve_device
from rlhf.core.reward_model import OFFSET_KEY, RewardScorer, load_sequence_classifier, reward_forward
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
    unsharded,
    weights_dtype,
)
from rlhf.training.config import RewardTrainConfig
from rlhf.training.losses import kwise_loss, pairwise_accuracy
from rlhf.training.normalize import fold_offset, offset_modules
from rlhf.training.preferences import (
    ComparisonBatch,
    collate,
    completions,
    load_rankings,
    prompt_batches,
    render_rankings,
    split_rankings,
)

log = logging.getLogger("rlhf.training.rm")


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
    here = init_world(config.device, config.dist_timeout)  # a no-op outside torchrun
    try:
        return fit(config, train_set, eval_set, progress and here.is_main)
    finally:
        close_world()


def load_model(
    config: RewardTrainConfig, tokenizer, device: torch.device, extra_trained: tuple[str, ...] | None = None
) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The LM as a one-output classifier, prepared for training; and what, besides LoRA's adapters, trains."""
    model = load_sequence_classifier(config.model, tokenizer, device, weights_dtype(config))
    # Dropout off (as TRL's reward trainer does): with it on, the tiny model learns the synthetic task's
    # bag-of-words part (the adjectives) but not the prompt-response relation (on topic?).
    disable_dropout(model)
    # With LoRA the score head trains in full (peft does that for a classifier), and so does the final norm
    # when the mean-0 offset must go there: then the adapter alone carries the normalization.
    if extra_trained is None:
        probe = pad_right([tokenizer("probe").input_ids], tokenizer.pad_token_id, device)
        extra_trained = offset_modules(model, *probe) if config.uses_lora else ()
    return prepare_model(model, config, "score", extra_trained), extra_trained


def fit(config: RewardTrainConfig, train_set, eval_set, progress: bool) -> TrainResult:
    device = resolve_device(rank_device(config.device))
    check_precision(config, device)
    torch.manual_seed(config.seed)  # the same on every rank: the same head (and LoRA) init everywhere
    tokenizer = use_chat_template(load_tokenizer(config.model), config.chat_template)
    train_set, eval_set = render_rankings(train_set, tokenizer), render_rankings(eval_set, tokenizer)
    # Under torchrun the model loads on the CPU and moves to the GPU shard by shard (rlhf.core.distributed.shard).
    model, extra_trained = load_model(config, tokenizer, torch.device("cpu") if is_distributed() else device)
    model = shard(model, device)
    scorer = RewardScorer(model, tokenizer, options=config)
    max_length = config.max_length or scorer.max_length
    # Every distinct (prompt, response) is tokenized once, up front, not once per epoch.
    items = completions(train_set + eval_set)
    encoded = dict(zip(items, encode_pairs(tokenizer, items, max_length), strict=True))

    rng = random.Random(config.seed)
    steps = config.epochs * len(prompt_batches(train_set, config.batch_size))
    # --adam-beta2 0.95 (as in GPT-3 and nanoGPT): with 0.999 the tiny model learns the synthetic task's
    # prompt-response relation (is the answer on topic?) later, and for some seeds not at all.
    optimizer = make_optimizer(
        trainable_parameters(model),
        config,
        lr=config.lr,
        betas=(0.9, config.adam_beta2),
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
            if progress:
                tqdm.write(f"epoch {epoch + 1}: held-out pairwise accuracy {accuracy:.4f} ({n} comparisons)")
    bar.close()

    accuracy, n_eval = evaluate(scorer, eval_set, encoded) if eval_set else (None, 0)
    before, after, where = normalize(scorer, [encoded[item] for item in completions(train_set)])
    if world().is_main:
        log.info("normalized", extra={"reference_mean_before": before, "reference_mean_after": after, "folded": where})
    # An offset kept in config.json (RMSNorm models: no bias to fold it into) must travel with an adapter too.
    offset = getattr(base_model(model).config, OFFSET_KEY, None)

    def cpu_copy() -> torch.nn.Module:
        return with_offset(load_model(config, tokenizer, torch.device("cpu"), extra_trained)[0], offset)

    whole = unsharded(model, cpu_copy)
    if whole is not None:  # rank 0's (or the one process's)
        save_trained(
            whole,
            tokenizer,
            config.out,
            config,
            base=config.model,
            config_overrides={OFFSET_KEY: offset} if offset is not None and is_peft(whole) else None,
        )
    return TrainResult(Path(config.out), accuracy, n_eval, before, after, where)


def with_offset(model: torch.nn.Module, offset: float | None) -> torch.nn.Module:
    if offset is not None:
        setattr(base_model(model).config, OFFSET_KEY, offset)
    return model


def rank_share(batch: ComparisonBatch) -> tuple[ComparisonBatch, float]:
    """This rank's prompts of a batch (their items and comparisons, re-indexed), and the weight of its loss
    term: 1.0, or 0.0 for a rank left without prompts, which forwards the first prompt anyway (batch_share)."""
    if not is_distributed():
        return batch, 1.0
    prompts, weight = batch_share(batch.num_prompts)
    kept = [c for c, g in enumerate(batch.group) if prompts.start <= g < prompts.stop]
    used = sorted({i for c in kept for i in (batch.winners[c], batch.losers[c])})
    index = {old: new for new, old in enumerate(used)}
    share = ComparisonBatch(
        [batch.items[i] for i in used],
        [index[batch.winners[c]] for c in kept],
        [index[batch.losers[c]] for c in kept],
        [batch.group[c] - prompts.start for c in kept],
        prompts.stop - prompts.start,
    )
    return share, weight


def comparison_loss(
    model,
    batch: ComparisonBatch,
    encoded: dict[tuple[str, str], Encoded],
    pad_id: int,
    options: TrainingOptions | None = None,
) -> tuple[torch.Tensor, float]:
    """What this rank backpropagates for a batch of whole prompts, and the batch's K-wise loss.

    The rank's prompts' mean loss counts by their share of the batch's prompts, times the world size since FSDP2
    averages the ranks' gradients: the one-process gradient results. Each distinct item is forwarded once."""
    device = next(model.parameters()).device
    share, weight = rank_share(batch)
    ids, attention = pad_right([encoded[item].input_ids for item in share.items], pad_id, device)  # (N, T)
    winners, losers, group = (torch.tensor(v, device=device) for v in (share.winners, share.losers, share.group))
    with autocast(options or TrainingOptions(), device):
        rewards = reward_forward(model, ids, attention)  # (N,)
    loss = kwise_loss(rewards, winners, losers, group, share.num_prompts) * (
        weight * share.num_prompts / batch.num_prompts
    )
    return loss * world().size, all_reduce_sum(loss.detach()).item()


def train_step(
    model,
    optimizer,
    batch: ComparisonBatch,
    encoded: dict[tuple[str, str], Encoded],
    pad_id: int,
    options: TrainingOptions | None = None,
) -> float:
    """One update on a batch of whole prompts, all of its comparisons in the loss; returns the batch's loss."""
    loss, batch_loss = comparison_loss(model, batch, encoded, pad_id, options)
    optimizer_step(optimizer, loss, model, max_grad_norm=1.0)
    return batch_loss


def score_all(scorer: RewardScorer, encoded: list[Encoded], batch_size: int = 64) -> list[float]:
    """scorer.score_encoded, split over the ranks: each scores its share in as many forwards as the others (under
    FSDP each is a collective), and every rank gets all the scores."""
    if not is_distributed():
        return scorer.score_encoded(encoded, batch_size)
    mine = encoded[shard_rows(len(encoded))]
    scores = [0.0] * len(mine)
    chunks = by_length_chunks([len(e.input_ids) for e in mine], batch_size)
    for step in range(math.ceil(math.ceil(len(encoded) / world().size) / batch_size)):  # the largest share's
        if step < len(chunks):
            for i, value in zip(chunks[step], scorer.forward([mine[i] for i in chunks[step]]), strict=True):
                scores[i] = value
        else:
            scorer.forward(encoded[:1])  # this share is done: a forward the others' collectives wait for
    reshard(scorer.model)
    return [score for part in all_gather_objects(scores) for score in part]


def evaluate(scorer: RewardScorer, rankings, encoded: dict[tuple[str, str], Encoded]) -> tuple[float, int]:
    """Pairwise accuracy against the labels over every comparison of the rankings."""
    batch = collate(rankings)
    rewards = torch.tensor(score_all(scorer, [encoded[item] for item in batch.items]))
    correct, total = pairwise_accuracy(rewards, torch.tensor(batch.winners), torch.tensor(batch.losers))
    return correct / total, total


def normalize(scorer: RewardScorer, reference: list[Encoded]) -> tuple[float, float, str]:
    """Fold the mean reward over the reference completions into a bias; returns (before, after, where)."""
    mean = lambda: sum(score_all(scorer, reference)) / len(reference)  # noqa: E731
    before = mean()
    probe = pad_right([e.input_ids for e in reference[:4]], scorer.tokenizer.pad_token_id, scorer.device)
    where = fold_offset(scorer.model, before, *probe)
    return before, mean(), where

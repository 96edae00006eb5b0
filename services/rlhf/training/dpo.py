"""Direct alignment from preferences: DPO (Rafailov et al. 2023), cDPO and IPO (Azar et al. 2023).

    rlhf train dpo --model models/sft --data data/preferences.jsonl --out models/dpo \
        [--reference localhost:50053] [--loss sigmoid|ipo] [--beta 0.1] [--label-smoothing 0.0]

The losses, per comparison, are in rlhf.training.losses (sigmoid for DPO and cDPO, and IPO, which reads
per-token mean log-probs, as TRL does).

The data is the reward model's: K-wise rankings expand to their C(K,2) comparisons, and a batch holds
whole prompts. log pi_ref is computed once per (prompt, response) before training, by the reference
service's LogProbs RPC (token ids, as the learner sends them) or by a frozen local copy of --model. The
output is a standard model dir that `rlhf serve policy` serves.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.core.errors import UserError
from rlhf.core.text import Encoded
from rlhf.training.config import DPOConfig
from rlhf.training.losses import ipo_loss, preference_logits, sigmoid_loss

log = logging.getLogger("rlhf.dpo")


def dpo_loss(h: torch.Tensor, config: DPOConfig) -> torch.Tensor:
    """The mean loss over a batch's comparisons."""
    if config.loss == "ipo":
        return ipo_loss(h, config.beta).mean()
    return sigmoid_loss(h, config.beta, config.label_smoothing).mean()


def sequence_logprobs(model: torch.nn.Module, encoded: Sequence[Encoded], pad_id: int, mean: bool) -> torch.Tensor:
    """(N,) log pi(y|x) of each item: the sum over its response tokens (the per-token mean with mean=True)."""
    from rlhf.core.logprobs import response_logprobs

    logprobs, mask = response_logprobs(
        model, [e.prompt_ids for e in encoded], [e.response_ids for e in encoded], pad_id
    )
    total = (logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if mean else total


def reference_logprobs(encoded: Sequence[Encoded], reference, mean: bool, chunk: int = 64) -> torch.Tensor:
    """(N,) log pi_ref(y|x) of each item, computed once: `reference` is a ReferenceClient (token ids over
    LogProbs) or a local frozen model (anything with .logprobs(items) -> per-token lists)."""
    values = []
    for start in range(0, len(encoded), chunk):
        part = encoded[start : start + chunk]
        for tokens in reference.logprobs([(e.prompt_ids, e.response_ids) for e in part]):
            total = float(sum(tokens))
            values.append(total / max(len(tokens), 1) if mean else total)
    return torch.tensor(values, dtype=torch.float32)


@dataclass
class DPOResult:
    out: Path
    train_comparisons: int
    eval_comparisons: int
    eval_accuracy_before: float | None  # held-out share of comparisons with h > 0 (about 0.5: h = 0 at the start)
    eval_accuracy_after: float | None
    eval_loss_after: float | None
    train_loss: float  # mean over the last epoch's batches


def check_config(config: DPOConfig) -> None:
    if config.beta <= 0:
        raise UserError("--beta must be positive")
    if not 0 <= config.label_smoothing < 0.5:
        raise UserError("--label-smoothing must lie in [0, 0.5)")
    if config.label_smoothing and config.loss == "ipo":
        raise UserError("--label-smoothing goes with --loss sigmoid (cDPO), not ipo")
    if config.epochs < 1 or config.batch_size < 1:
        raise UserError("--epochs and --batch-size must be >= 1")
    config.check_training_options()


def open_reference(config: DPOConfig, tokenizer):
    """The source of log pi_ref: the reference service (its tokenizer checked against ours), or a frozen
    local copy of --model."""
    from rlhf.core.modeling import tokenizer_fingerprint

    if not config.reference:
        from rlhf.reference.local import LocalReference

        return LocalReference(config.model, device=config.device)
    import grpc

    from rlhf.core.client import describe_rpc_error
    from rlhf.reference.client import ReferenceClient

    client = ReferenceClient(config.reference, timeout=300)
    try:
        theirs = client.model_info().tokenizer_fingerprint
    except grpc.RpcError as err:
        client.close()
        raise UserError(f"--reference {config.reference}: {describe_rpc_error(err)}") from None
    if theirs != tokenizer_fingerprint(tokenizer):
        client.close()
        raise UserError(f"--reference {config.reference} serves another tokenizer than --model {config.model}")
    return client


def batch_loss(model, batch, encoded: dict, ref: dict, config: DPOConfig, pad_id: int):
    """(loss, h) on one batch of whole prompts: each distinct item forwarded once, every comparison in the loss."""
    from rlhf.core.training import autocast

    device = next(model.parameters()).device
    with autocast(config, device):
        policy = sequence_logprobs(model, [encoded[item] for item in batch.items], pad_id, mean=config.loss == "ipo")
    reference = torch.tensor([ref[item] for item in batch.items], device=device)
    winners, losers = (torch.tensor(v, device=device) for v in (batch.winners, batch.losers))
    h = preference_logits(policy[winners], policy[losers], reference[winners], reference[losers])
    return dpo_loss(h, config), h.detach()


@torch.no_grad()
def evaluate(model, rankings, encoded: dict, ref: dict, config: DPOConfig, pad_id: int) -> tuple[float, float, int]:
    """(share of comparisons ranked right by the implicit reward, h > 0, with a tie counted half; mean loss;
    comparisons) over the rankings. Before training h = 0 everywhere, so accuracy starts at 0.5."""
    from rlhf.training.preferences import prompt_batches

    hits, losses, count = 0.0, 0.0, 0
    for batch in prompt_batches(rankings, config.batch_size):
        loss, h = batch_loss(model, batch, encoded, ref, config, pad_id)
        right = (h > 0).float() + 0.5 * (h == 0).float()
        hits, losses, count = hits + float(right.sum()), losses + loss.item() * len(h), count + len(h)
    return hits / count, losses / count, count


def train_dpo(config: DPOConfig, progress: bool = True) -> DPOResult:
    from tqdm.auto import tqdm

    from rlhf.core.chat import use_chat_template
    from rlhf.core.modeling import context_length, load_causal_lm, load_tokenizer, resolve_device
    from rlhf.core.text import encode_pair
    from rlhf.core.training import (
        check_precision,
        disable_dropout,
        make_optimizer,
        optimizer_step,
        prepare_model,
        save_trained,
        trainable_parameters,
        weights_dtype,
    )
    from rlhf.training.preferences import (
        completions,
        load_rankings,
        prompt_batches,
        render_rankings,
        split_rankings,
    )

    check_config(config)
    rankings = load_rankings(config.data)  # before any model loads: bad data fails at once
    if not rankings:
        raise UserError(f"no preference rows in {config.data}")
    split_rankings(rankings, config.eval_fraction, config.seed)  # a bad fraction fails before any model loads
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    tokenizer = use_chat_template(load_tokenizer(config.model), config.chat_template)
    rankings = render_rankings(rankings, tokenizer)
    train_set, eval_set = split_rankings(rankings, config.eval_fraction, config.seed)
    pad_id = tokenizer.pad_token_id
    check_precision(config, device)
    # Dropout off (eval mode, or off in train mode under gradient checkpointing) while training: at step 0 pi
    # must equal pi_ref exactly, so h = 0. LoRA's B starts at zero, so that holds with an adapter too.
    model = prepare_model(load_causal_lm(config.model, device, weights_dtype(config)), config, "causal-lm")
    if config.gradient_checkpointing:
        disable_dropout(model)
        model.train()
    else:
        model.eval()
    max_length = min(config.max_length, context_length(model.config))
    items = completions(rankings)
    encoded = {item: encode_pair(tokenizer, *item, max_length) for item in items}

    reference = open_reference(config, tokenizer)
    try:
        values = reference_logprobs([encoded[item] for item in items], reference, mean=config.loss == "ipo")
    finally:
        if callable(getattr(reference, "close", None)):
            reference.close()
    ref = dict(zip(items, values.tolist(), strict=True))

    before = evaluate(model, eval_set, encoded, ref, config, pad_id)[0] if eval_set else None
    rng = random.Random(config.seed)
    steps = config.epochs * len(prompt_batches(train_set, config.batch_size))
    optimizer = make_optimizer(trainable_parameters(model), config, lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    bar = tqdm(total=steps, desc="dpo", unit="batch", disable=not progress, dynamic_ncols=True)
    losses: list[float] = []
    for _epoch in range(config.epochs):
        losses = []
        for batch in prompt_batches(train_set, config.batch_size, rng):
            loss, h = batch_loss(model, batch, encoded, ref, config, pad_id)
            optimizer_step(optimizer, loss, model, config.max_grad_norm)
            schedule.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}", accuracy=f"{(h > 0).float().mean().item():.2f}")
    bar.close()
    after, eval_loss, n_eval = evaluate(model, eval_set, encoded, ref, config, pad_id) if eval_set else (None, None, 0)
    out = save_trained(model, tokenizer, config.out, config, base=config.model)
    n_train = sum(len(r.comparisons()) for r in train_set)
    log.info("dpo done", extra={"out": str(out), "eval_accuracy_before": before, "eval_accuracy_after": after})
    return DPOResult(out, n_train, n_eval, before, after, eval_loss, sum(losses) / len(losses))

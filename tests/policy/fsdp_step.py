"""One optimizer step of `rlhf train sft` and `rlhf train rm` on fixed global batches: its gradients, their norm
and the weights after it. tests/policy/test_distributed_stages.py runs it in one process and as a script under
torchrun (FSDP2 over the ranks), then compares.

    python -m torch.distributed.run --nproc-per-node 2 tests/policy/fsdp_step.py MODEL SFT_DATA RM_DATA OUT.pt
"""

from __future__ import annotations

import sys

import torch

from rlhf.core.distributed import close_world, full_tensor, init_world, shard, world
from rlhf.core.modeling import load_causal_lm, load_tokenizer
from rlhf.core.reward_model import load_sequence_classifier
from rlhf.core.text import encode_pair, encode_pairs
from rlhf.core.training import TrainingOptions, disable_dropout, trainable_parameters
from rlhf.training.preferences import collate, completions, load_rankings
from rlhf.training.rm import comparison_loss
from rlhf.training.sft import batch_loss
from rlhf.training.sft_data import load_rows

CPU = torch.device("cpu")
MAX_NORM = 0.1  # below the gradients' norm: the clipping acts


def one_step(model: torch.nn.Module, loss_of) -> dict:
    """loss_of(model) -> (loss to backward, batch loss); the step's figures, whole on every rank."""
    model = shard(model)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    loss, batch_loss_value = loss_of(model)
    loss.backward()
    grads = {name: full_tensor(p.grad).clone() for name, p in model.named_parameters()}
    norm = full_tensor(torch.nn.utils.clip_grad_norm_(trainable_parameters(model), MAX_NORM))
    optimizer.step()
    weights = {name: full_tensor(p.detach()).clone() for name, p in model.named_parameters()}
    return {"loss": batch_loss_value, "grads": grads, "norm": float(norm), "weights": weights}


def sft_step(model_dir: str, data: str, rows: int) -> dict:
    tokenizer = load_tokenizer(model_dir)
    examples = [encode_pair(tokenizer, p, r, 64) for p, r in load_rows(data)[:rows]]
    model = load_causal_lm(model_dir, CPU, torch.float32)
    disable_dropout(model)  # dropout's masks would fall on other rows under two ranks
    return one_step(model, lambda m: batch_loss(m, examples, tokenizer.pad_token_id, TrainingOptions()))


def rm_step(model_dir: str, data: str, prompts: int) -> dict:
    tokenizer = load_tokenizer(model_dir)
    rankings = load_rankings(data)[:prompts]
    items = completions(rankings)
    encoded = dict(zip(items, encode_pairs(tokenizer, items, 64), strict=True))
    torch.manual_seed(0)  # the new score head's init
    model = load_sequence_classifier(model_dir, tokenizer, CPU, torch.float32)
    disable_dropout(model)
    return one_step(model, lambda m: comparison_loss(m, collate(rankings), encoded, tokenizer.pad_token_id))


def every_step(model_dir: str, sft_data: str, rm_data: str) -> dict:
    """Batches that split unevenly over two ranks, and ones that leave a rank without rows (weight 0)."""
    return {
        "sft-5": sft_step(model_dir, sft_data, 5),
        "sft-1": sft_step(model_dir, sft_data, 1),
        "rm-5": rm_step(model_dir, rm_data, 5),
        "rm-1": rm_step(model_dir, rm_data, 1),
    }


if __name__ == "__main__":
    model_dir, sft_data, rm_data, out = sys.argv[1:5]
    init_world("cpu", timeout_s=60)
    steps = every_step(model_dir, sft_data, rm_data)
    if world().is_main:
        torch.save(steps, out)
    close_world()

"""Every reward setting, in two dataclasses; the CLI flags and their --help are generated from them."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import get_type_hints

DEFAULT_PORT = 50051  # rlhf serve reward


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


def _required(help: str):
    return field(default="", metadata={"help": help, "required": True})


@dataclass
class RewardTrainConfig:
    """`rlhf train rm`."""

    model: str = _required("starting point: a causal LM dir (e.g. the SFT model) or a cached Hub name")
    data: str = _required("preference data: JSONL or Parquet file, or a cached `datasets` name[:split]")
    out: str = _required("where to write the reward model dir (model + tokenizer)")
    epochs: int = _opt(3, "passes over the training rankings")
    lr: float = _opt(3e-4, "AdamW peak learning rate (warmup over 5%% of steps, then linear decay)")
    batch_size: int = _opt(16, "prompts per batch; each brings all C(K,2) of its comparisons")
    max_length: int | None = _opt(None, "tokens per (prompt, response); longer inputs lose the prompt start "
                                        "(default: the model context)")
    eval_fraction: float = _opt(0.1, "share of prompts held out to measure pairwise accuracy")
    seed: int = _opt(0, "data split, shuffling and head initialisation")
    device: str = _opt("auto", "auto, cpu, cuda, mps")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    adam_beta2: float = _opt(0.999, "AdamW beta2; 0.95 (as in GPT-3) helps small models learn the task")


@dataclass
class RewardServiceConfig:
    """`rlhf serve reward` (the server flags themselves come from rlhf.core.server.ServerOptions)."""

    model: str = _required("reward model dir (from `rlhf train rm`)")
    device: str = _opt("auto", "auto, cpu, cuda, mps")
    dtype: str = _opt("auto", "auto (bfloat16 on GPUs that support it, else float32), float32, bfloat16, float16")
    max_batch_size: int = _opt(64, "most items per model batch (1 turns dynamic batching off)")
    max_wait_ms: float = _opt(2.0, "longest an item waits for its batch to fill")
    max_items_per_request: int = _opt(1024, "larger requests are refused with INVALID_ARGUMENT")
    instances: int = _opt(1, "model copies, each in its own process, running batches concurrently (on CPU each "
                             "gets cpus/instances torch threads)")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field (underscores become dashes), help from the field's metadata."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag, hint, meta = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata
        kind = next(t for t in (int, float, str) if t == hint or t in getattr(hint, "__args__", ()))
        if meta.get("required"):
            parser.add_argument(flag, type=kind, required=True, help=meta["help"])
        else:
            suffix = "" if f.default is None else f" (default {f.default})"
            parser.add_argument(flag, type=kind, default=f.default, help=meta["help"] + suffix)


def config_from_args(args: argparse.Namespace, cls: type):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

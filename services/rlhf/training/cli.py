"""Offline training commands: `rlhf train sft`, `rlhf train rm`, `rlhf train dpo`."""

from __future__ import annotations

import argparse

from rlhf.core.flags import add_config_arguments, config_from_args
from rlhf.core.launch import add_launch_arguments
from rlhf.training.config import DPOConfig, RewardTrainConfig, SFTConfig


def register(commands) -> None:
    sft = commands.train.add_parser("sft", help="supervised fine-tuning on prompt-response pairs")
    add_config_arguments(sft, SFTConfig)
    add_launch_arguments(sft)
    sft.set_defaults(func=_train_sft)

    rm = commands.train.add_parser("rm", help="train a reward model on preference rankings")
    add_config_arguments(rm, RewardTrainConfig)
    add_launch_arguments(rm)
    rm.set_defaults(func=_train_rm)

    dpo = commands.train.add_parser(
        "dpo",
        help="direct alignment on preference rankings: DPO, cDPO or IPO (no reward model, no RL)",
        description="Direct preference optimization from the SFT model: K-wise rankings expand to their C(K,2) "
        "comparisons; log pi_ref comes once per (prompt, response) from --reference or a frozen copy of --model.",
    )
    add_config_arguments(dpo, DPOConfig)
    dpo.set_defaults(func=_train_dpo)


def _train_sft(args: argparse.Namespace) -> int:
    from rlhf.core.distributed import is_main_process
    from rlhf.training.sft import train_sft

    result = train_sft(config_from_args(args, SFTConfig))
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    print(
        f"eval loss (response tokens, {result.eval_examples} held-out pairs): "
        f"{result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f}"
    )
    print(f"wrote {result.out}")
    return 0


def _train_rm(args: argparse.Namespace) -> int:
    from rlhf.core.distributed import is_main_process
    from rlhf.training.rm import train_reward_model

    result = train_reward_model(config_from_args(args, RewardTrainConfig))
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    if result.eval_accuracy is not None:
        print(f"held-out pairwise accuracy: {result.eval_accuracy:.4f} ({result.eval_comparisons} comparisons)")
    print(
        f"normalized: training completions' mean reward {result.reference_mean_before:+.4f} -> "
        f"{result.reference_mean_after:+.2e} (folded into {result.folded_into})"
    )
    print(f"wrote {result.out}")
    return 0


def _train_dpo(args: argparse.Namespace) -> int:
    from rlhf.training.dpo import train_dpo

    result = train_dpo(config_from_args(args, DPOConfig))
    if result.eval_accuracy_after is not None:
        print(
            f"held-out preference accuracy (implicit reward, {result.eval_comparisons} comparisons): "
            f"{result.eval_accuracy_before:.4f} -> {result.eval_accuracy_after:.4f}; "
            f"loss {result.eval_loss_after:.4f}"
        )
    print(f"wrote {result.out}")
    return 0
